"""KerasTuner's chief/worker mode: the chief's server, the worker's loop, local worker processes."""
