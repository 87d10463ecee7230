"""The one door to each library's private names: Keras, KerasTuner, TensorFlow.

Every name of theirs that is not public API goes through one module here, which says
why it is needed; tests/hypermodels/test_compat.py asserts each exists with the shape
used, so an upgrade of the pinned versions fails a test instead of a run.
"""
