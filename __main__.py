"""``python -m cxr_tuner ARGS`` is ``cxr-tuner ARGS``."""

from cxr_tuner.cli import main

main()
