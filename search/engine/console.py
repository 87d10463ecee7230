"""What a user sees on the terminal: quiet start-up, rounded values, progress, the closing summary.

The entry point calls :func:`quiet_start` once; the stages format their lines
with :func:`hyperparameter_text`; the job ends with :func:`summary_lines`.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path

from cxr_tuner.data.errors import UserError
from cxr_tuner.search.engine.config import load_config
from cxr_tuner.search.engine.layout import MODEL_STAMP
from cxr_tuner.search.figures.shift_report import stress_line
from cxr_tuner.search.figures.text import number_text, value_text


def quiet_start(verbose: bool = False, tensorflow: bool = True) -> None:
    """A command's process-wide output settings, made once when it runs (never at import).

    Unless ``verbose``, TensorFlow's and absl's start-up messages are silenced:
    TensorFlow's C++ side writes its oneDNN and CPU-feature notices to file
    descriptor 2 while it loads, before absl's logging is set up and whatever
    ``TF_CPP_MIN_LOG_LEVEL`` says; so the import runs with descriptor 2 pointed at
    /dev/null, and is restored right after (errors raised by the import still show).
    The devices are listed in the same window: on a machine with CUDA libraries and no
    GPU, that is where the "failed call to cuInit" line comes from (once per process).
    Known, harmless library warnings are hidden either way. ``tensorflow`` False: a command
    that prints static facts, which answers without loading TensorFlow at all.
    """
    if verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0")
    else:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if not verbose and tensorflow:
        with _stderr_to_devnull():
            tf = importlib.import_module("tensorflow")  # loaded here, silently, once
            importlib.import_module("keras_tuner")
            tf.config.list_physical_devices()
    if not verbose:
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
def quiet_native():
    """Native libraries' notices (TensorFlow Lite's "Created ... XNNPACK delegate") hidden unless verbose.

    They write to file descriptor 2 directly; quiet means `quiet_start` made TensorFlow's
    logger quiet. Python's exceptions are not affected.
    """
    if logging.getLogger("tensorflow").level < logging.ERROR:
        yield
        return
    sys.stderr.flush()
    with _stderr_to_devnull():
        yield


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


def hyperparameter_text(values: dict, separator: str = ", ") -> str:
    """``name value`` pairs, rounded, e.g. ``backbone mobilenet_025, dropout 0.3, learning_rate 5.3e-04``."""
    return separator.join(f"{name} {value_text(value)}" for name, value in values.items())


def weights_lines(config) -> list[str]:
    """The search's opening lines: where each backbone's starting weights come from, one line each.

    E.g. ``pretrained: mobilenet_025 ImageNet weights, shipped with the package
    (hypermodels/assets/mobilenet_2_5_224_tf_no_top.h5)`` and ``from scratch: vanilla_cnn
    (no pretrained weights exist for it)``, pretrained ones first. Called after ``search.run.check_inputs``, so
    nothing is downloaded here.

    Args:
        config: The run's ``search.engine.config.RunConfig``.
    """
    from cxr_tuner.hypermodels.weights import starts_pretrained, weights_origin  # here: importing Keras must wait for quiet_start

    pretrained, scratch = [], []
    for name in config.backbones:
        spec = config.backbone_specs.get(name)
        origin = weights_origin(spec, config.weights, config.image_size)
        if starts_pretrained(spec, config.weights):
            pretrained.append(f"pretrained: {name} {origin}")
        else:
            scratch.append(f"from scratch: {name} ({origin})")
    return pretrained + scratch


def transfer_line(best: dict, config) -> str | None:
    """The best pretrained trial against the best from-scratch one, on the class-weighted validation loss.

    E.g. ``pretrained vs from scratch: val_weighted_loss 0.4580 (trial 0003, mobilenet_025) vs 0.7130
    (trial 0007, vanilla_cnn): pretrained lower by 0.2550; chance ln 3 = 1.0986``. None when only one
    kind of backbone was searched; ``n/a (why)`` when one kind has no completed trial.

    Args:
        best: The content of ``best_hyperparameters.json`` (``search.run.best_trials``).
        config: The run's ``search.engine.config.RunConfig``.
    """
    from cxr_tuner.hypermodels.weights import starts_pretrained

    def pretrained(backbone) -> bool:
        return starts_pretrained(config.backbone_specs.get(backbone), config.weights)

    kinds = {pretrained(name) for name in config.backbones}
    if len(kinds) < 2:
        return None
    objective = (best.get("objective") or {}).get("name", "val_weighted_loss")
    trials = list((best.get("best_per_backbone") or {}).values()) or best.get("top") or []
    scored = [t for t in trials if isinstance(t, dict) and isinstance(t.get(objective), (int, float))]
    found = {}
    for kind in (True, False):
        of_kind = [t for t in scored if pretrained((t.get("hyperparameters") or {}).get("backbone")) == kind]
        found[kind] = min(of_kind, key=lambda t: t[objective]) if of_kind else None
    head = "pretrained vs from scratch:"
    missing = [word for kind, word in ((True, "pretrained"), (False, "from-scratch")) if found[kind] is None]
    if missing:
        return f"{head} {number_text(None, reason='no ' + ' or '.join(missing) + ' trial completed')}"
    ours, theirs = (f"{number_text(t[objective], '.4f')} (trial {t.get('trial_id', '?')}, "
                    f"{t['hyperparameters']['backbone']})" for t in (found[True], found[False]))
    gap = found[False][objective] - found[True][objective]
    verdict = (f"pretrained lower by {gap:.4f}" if gap > 0 else
               f"from scratch lower by {-gap:.4f}" if gap < 0 else "the same")
    from cxr_tuner.search.engine.task import task_of  # here: the task imports Keras, which must wait for quiet_start

    return f"{head} {objective} {ours} vs {theirs}: {verdict}{task_of(config).chance_text(config)}"


def summary_lines(layout, started: float | None = None) -> list[str]:
    """Where everything of a finished job is, with the headline test figures and their 95% CIs.

    With both kinds of backbone searched, also the best pretrained trial against the best
    from-scratch one. Whatever the run did not produce reads ``n/a (why)`` or is left out.

    Args:
        layout: The run's ``search.engine.layout.RunLayout``.
        started: ``time.perf_counter()`` when the job started, for its duration.
    """
    lines = ["done" + (f" in {_duration(time.perf_counter() - started)}" if started else "") + ". Results:"]
    page = layout.report / "report.html"
    if page.is_file():
        lines.append(f"  report:       {page} (open in a browser; also report.md)")
    lines.append(f"  tensorboard:  tensorboard --logdir {layout.tensorboard}")
    if layout.winners_summary.is_file():
        lines.append(f"  winners:      {layout.winners} (summary.json)")
    card = _read(layout.export / "model_card.json")
    if card is not None:
        groups = card.get("files") if isinstance(card.get("files"), dict) else {}
        files = ", ".join(sorted({Path(f).parts[0] for group in groups.values() for f in group}))
        lines.append(f"  exported:     {layout.export}/ {files + ', ' if files else ''}model_card.json")
    line = _transfer_summary(layout)
    if line:
        lines.append(f"  {line}")
    metrics = _read(layout.metrics)
    if metrics is not None:
        lines += headline_lines(metrics) + [f"    {stress_line(metrics.get('stress'))}"]
        lines += external_lines(metrics)
    return lines


def headline_lines(metrics: dict, title: str = "test split") -> list[str]:
    """The headline figures of a set's ``metrics.json``: ``accuracy 0.942 [0.885, 1.000]`` or ``n/a (why)``."""
    from cxr_tuner.search.engine.task import task_named  # here: the task imports Keras, which must wait for quiet_start

    return task_named(metrics.get("task")).headline_lines(metrics, title)


def external_lines(metrics: dict) -> list[str]:
    """Each external set scored with the test split: its figures and stress line, read from its own ``metrics.json``.

    A set whose file is gone or holds another model's figures reads ``n/a``: it is not shown as current.
    """
    lines = []
    for name, entry in (metrics.get("external") or {}).items():
        found = _read(Path(entry.get("metrics", "")))
        if found is None or found.get(MODEL_STAMP) != metrics.get(MODEL_STAMP):
            lines.append(f"  external {name}: {number_text(None, reason='its metrics.json is gone or of another model')}")
            continue
        lines += headline_lines(found, f"external {name}") + [f"    {stress_line(found.get('stress'))}",
                                                               f"    report: {entry.get('report')}"]
    return lines


def _transfer_summary(layout) -> str | None:
    best = _read(layout.best)
    try:
        return transfer_line(best, load_config(layout.root)) if best is not None else None
    except UserError:  # no config.json, or a damaged one: the summary goes without the comparison
        return None


def _read(path: Path):
    """A JSON file's content, or None when it is missing or damaged (the summary leaves it out)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"
