"""Evaluation: metrics, plots, SHAP explanations, fairness, the model card."""
