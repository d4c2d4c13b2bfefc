"""Serving: batch scoring (live scoring is MLflow's server with our model)."""
