"""Tuning, retraining, evaluation, Grad-CAM and export: composes `data` and `hypermodels`."""
