"""cxr-tuner: a KerasTuner search for the best transfer-learning chest X-ray classifier.

The checkout's root is this package (``package_dir = cxr_tuner = .``): ``cxr_tuner.data``,
``cxr_tuner.hypermodels``, ``cxr_tuner.search`` and ``cxr_tuner.cli``. Importing it loads
nothing heavy.
"""

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("cxr-tuner")
except _metadata.PackageNotFoundError:  # a checkout that was never installed
    __version__ = "0+unknown"
