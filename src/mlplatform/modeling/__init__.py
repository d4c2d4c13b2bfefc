"""Modeling: the model families, preprocessing, and the training stage."""
