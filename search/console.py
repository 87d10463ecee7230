"""What a user sees on the terminal: quiet start-up, rounded values, progress, the closing summary.

The entry point calls :func:`quiet_start` once; the stages format their lines
with :func:`hyperparameter_text` and report epochs through :func:`epoch_lines`;
the job ends with :func:`summary_lines`.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Callable


def quiet_start(verbose: bool = False) -> None:
    """A command's process-wide output settings, made once when it runs (never at import).

    Unless ``verbose``, TensorFlow's and absl's start-up messages are silenced:
    TensorFlow's C++ side writes its oneDNN and CPU-feature notices to file
    descriptor 2 while it loads, before absl's logging is set up and whatever
    ``TF_CPP_MIN_LOG_LEVEL`` says; so the import runs with descriptor 2 pointed at
    /dev/null, and is restored right after (errors raised by the import still show).
    Known, harmless library warnings are hidden either way.
    """
    if verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0")
    else:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        with _stderr_to_devnull():
            importlib.import_module("tensorflow")  # loaded here, silently, once
            importlib.import_module("keras_tuner")
        logging.getLogger("tensorflow").setLevel(logging.ERROR)
        logging.getLogger("absl").setLevel(logging.ERROR)
    _hide_known_warnings()


def _hide_known_warnings() -> None:
    # Warnings that would bury the trial lines: Keras loads the 224-pixel MobileNet weights
    # for other sizes (conv weights do not depend on size), and KerasTuner's Hyperband
    # continues a trial from weights without optimizer state.
    warnings.filterwarnings("ignore", message="`input_shape` is undefined or non-square")
    warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
    # Our tf.data pipelines shuffle themselves; Keras warns that fit's own shuffle=True is ignored.
    warnings.filterwarnings("ignore", message="`shuffle=True` was passed, but will be ignored")
    # Every trial traces its own new training step; TensorFlow counts those first traces
    # of new functions as "retracing" and suggests fixes for a loop that is not there.
    logger = logging.getLogger("tensorflow")
    if _not_retracing not in logger.filters:
        logger.addFilter(_not_retracing)


def _not_retracing(record) -> bool:
    return "triggered tf.function retracing" not in record.getMessage()


@contextlib.contextmanager
def _stderr_to_devnull():
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def value_text(value) -> str:
    """A hyperparameter value as a person reads it: ``0.3``, ``5.3e-04``, ``128``, ``mobilenet_025``."""
    if isinstance(value, float):
        if value != 0 and abs(value) < 0.01:
            return f"{value:.1e}"
        return f"{value:.3g}"
    return str(value)


def hyperparameter_text(values: dict, separator: str = ", ") -> str:
    """``name value`` pairs, rounded, e.g. ``backbone mobilenet_025, dropout 0.3, learning_rate 5.3e-04``."""
    return separator.join(f"{name} {value_text(value)}" for name, value in values.items())


def epoch_lines(log: Callable[[str], None], prefix: str, epochs: int):
    """A Keras callback logging one line per epoch: ``PREFIX epoch 3/16: weighted_loss 0.41, ... (2.1 s)``."""
    import keras  # here, not at the top: quiet_start must import TensorFlow first

    started = []

    def end(epoch, logs):
        logs = logs or {}
        figures = ", ".join(f"{name} {logs[name]:.3f}" for name in _EPOCH_FIGURES if name in logs)
        log(f"{prefix} epoch {epoch + 1}/{epochs}: {figures} ({time.perf_counter() - started[-1]:.1f} s)")

    return keras.callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs: started.append(time.perf_counter()),
                                          on_epoch_end=end)


_EPOCH_FIGURES = ("weighted_loss", "accuracy", "val_weighted_loss", "val_accuracy")


def summary_lines(layout, started: float | None = None) -> list[str]:
    """Where everything of a finished job is, and the headline test figures with their 95% CIs.

    Args:
        layout: The run's ``search.layout.RunLayout``.
        started: ``time.perf_counter()`` when the job started, for its duration.
    """
    lines = ["done" + (f" in {_duration(time.perf_counter() - started)}" if started else "") + ". Results:"]
    page = layout.report / "report.html"
    if page.is_file():
        lines.append(f"  report:       {page} (open in a browser; also report.md)")
    lines.append(f"  tensorboard:  tensorboard --logdir {layout.tensorboard}")
    if layout.winners_summary.is_file():
        lines.append(f"  winners:      {layout.winners} (summary.json)")
    card_file = layout.export / "model_card.json"
    if card_file.is_file():
        card = json.loads(card_file.read_text())
        files = ", ".join(sorted({Path(f).parts[0] for group in card["files"].values() for f in group}))
        lines.append(f"  exported:     {layout.export}/ {files}, model_card.json")
    if layout.metrics.is_file():
        lines += _headline_lines(json.loads(layout.metrics.read_text()))
    return lines


def _headline_lines(metrics: dict) -> list[str]:
    positive = metrics.get("positive_class", "COVID")
    figures = (("accuracy", metrics["accuracy"]), ("macro F1", metrics["macro_f1"]),
               ("macro ROC AUC", metrics["roc_auc"]["macro"]),
               (f"{positive} sensitivity", metrics["covid_sensitivity"]),
               (f"{positive} specificity", metrics["covid_specificity"]))
    lines = [f"  test split, {metrics['n']} images (95% bootstrap CI):"]
    for name, figure in figures:
        if figure.get("value") is None:
            lines.append(f"    {name:<20} n/a ({figure.get('reason', 'undefined')})")
            continue
        ci = figure.get("ci95")
        interval = f"  [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
        lines.append(f"    {name:<20} {figure['value']:.3f}{interval}")
    return lines


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"
