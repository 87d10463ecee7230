"""Backbone registry and the KerasTuner HyperModels that define what is searched."""
