"""Search: the Optuna hyperparameter search, every trial an MLflow run."""
