"""The run's one configuration: a frozen dataclass, saved as JSON in the run directory."""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

from cxr_tuner.data import files
from cxr_tuner.data.errors import UserError
from cxr_tuner.search.engine.layout import RunLayout

TUNERS = ("hyperband", "bayesian", "random")
# Where a winner's retrain starts (search.final.retrain): its search weights, or a fresh build.
RETRAIN_FROM = ("search", "scratch")
RETRAIN_FROM_DEFAULT = "scratch"  # measured on cxr3-dev: docs/final-model.md
TASKS = ("auto", "multiclass", "multilabel")  # auto: the data stage decides from the label file (data.labels)
UNCERTAIN = ("ones", "zeros", "ignore")  # CheXpert's U-Ones, U-Zeros, U-Ignore
MIN_POSITIVE_GROUPS = 5  # a finding needs this many positive patient groups in each split, or it is dropped
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")  # hypermodels.precision: auto and the policies
# Settings that may differ between the first run and a resume without changing
# what the search means.
_RESUMABLE = {"run_dir", "overwrite", "class_weights", "class_names"}


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything that defines a run; ``run_dir/config.json`` holds a copy.

    Attributes:
        run_dir: The run directory, the single source of truth for every stage.
        data: Folder or CSV manifest of labelled images; ``None`` = synthetic demo.
        backbones: Registry names the search chooses from.
        image_size: Side of the square images the models see.
        weights: ``"imagenet"``, ``"none"`` or a weights-file path.
        tuner: ``"hyperband"`` (default), ``"bayesian"`` or ``"random"``.
        max_epochs: Hyperband's most epochs for one model (and epochs per trial
            for the other tuners).
        factor: Hyperband's reduction factor.
        max_trials: Trial budget of the Bayesian and random tuners.
        batch_size: Batch size for training and evaluation.
        seed: Seeds the split, the tuner's sampling and the weight initialisation.
        fractions: Train, validation and test shares of the split.
        overwrite: Start over instead of resuming.
        cache_dtype: ``"float32"`` (exact) or ``"float16"`` (half the disk) activation cache.
        cache_budget_gb: Most GB (decimal) of activations to cache; deeper unfreeze
            depths beyond it train on images. None: no limit.
        precision: The Keras dtype policy models compute in (`hypermodels.precision`):
            ``float32``, ``mixed_float16`` or ``mixed_bfloat16``; ``auto`` until
            `search.run` resolves it for the machine, before it is saved.
        folds: Cross-validated search: each trial's score is the mean class-weighted
            validation loss over this many patient-grouped folds of train+val, and the
            final model trains on all of train+val (docs/folds.md). None: one split.
        time_budget: ``--time-budget`` in seconds: the job plans Hyperband's ``max_epochs``
            (at most the one given) and the retrain to finish within it, and stops at it
            (docs/time-budget.md). Saved with the planned ``max_epochs``; a resume needs
            the same budget. None: no budget.
        space: What the search searches, resolved (`search.engine.space_file`): ``hyperparameters``
            (each one's domain), ``retrain`` (top_k, seeds, variants) and ``backbones`` (one's
            own, with their files' digests). Empty: not yet resolved (`new_config` and
            `load_config` fill it).
        task: ``multiclass`` (one class per film, softmax) or ``multilabel`` (findings, sigmoid
            outputs, docs/multilabel.md); ``auto`` until the data stage decides from the labels.
        uncertain: How a CheXpert/MIMIC uncertain (-1) label counts: ``ones``, ``zeros`` or
            ``ignore`` (masked out of the loss and of every figure of that finding).
        views: The views kept (e.g. ``("PA", "AP")``); empty: all.
        min_positive_groups: A finding with fewer positive patient groups in any split is dropped.
        intensity: ``as_stored`` or ``standardize``: each film brought to a typical mean and
            spread inside the model (`hypermodels.preprocess`), so exposure and windowing differ less.
        shift_copies: Re-rendered copies of each train+val film (`data.shift.training_copies`):
            each training epoch shows every film once, clean or as one of its copies; 0: none.
        shift_objective: ``clean`` ranks trials on the class-weighted loss of the validation
            films; ``mixed`` on the mean of it and of their re-rendered copies (docs/shift.md).
        val_sources: ``mixed`` splits validation by patient; ``apart`` gives validation whole
            sources of each class that has two or more (`data.split.split_by_group`).
        class_names: Filled by the data stage: sorted class names, or the kept findings.
        class_weights: Filled by the data stage: ``compute_class_weight("balanced")``; for
            findings ``{name: {"positive": w, "negative": w}}``, balanced per finding on train.

    Class names and weights define the model's output and loss, so they sit with
    the settings; what the data stage counted is `search.engine.dataset.DataFindings`.
    """

    run_dir: str
    data: str | None = None
    backbones: tuple[str, ...] = ("mobilenet_025",)
    image_size: int = 224
    weights: str = "imagenet"
    tuner: str = "hyperband"
    max_epochs: int = 9
    factor: int = 3
    max_trials: int = 20
    batch_size: int = 32
    seed: int = 0
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    overwrite: bool = False
    cache_dtype: str = "float32"
    cache_budget_gb: float | None = None
    precision: str = "float32"  # what a run saved before the setting existed computed in
    folds: int | None = None
    time_budget: float | None = None
    space: dict = dataclasses.field(default_factory=dict)
    task: str = "multiclass"  # what a run saved before the setting existed was
    uncertain: str = "ones"
    views: tuple[str, ...] = ()
    min_positive_groups: int = MIN_POSITIVE_GROUPS
    intensity: str = "as_stored"  # runs saved before these settings existed: films as stored, no copies
    shift_copies: int = 0
    shift_objective: str = "clean"
    val_sources: str = "mixed"
    class_names: tuple[str, ...] = ()
    class_weights: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def path(self) -> Path:
        """The run directory as a Path."""
        return Path(self.run_dir)

    @property
    def layout(self) -> RunLayout:
        """The run directory's files and folders."""
        return RunLayout(self.run_dir)

    def search_space(self):
        """The `hypermodels.space.Space` of the hyperparameters the search declares."""
        from cxr_tuner.hypermodels.space import Space

        return Space.from_json(self.space.get("hyperparameters"))

    @property
    def retrain_choices(self) -> dict:
        """The retrain's ``top_k``, ``seeds`` and ``variants`` (the space file's ``[retrain]``)."""
        from cxr_tuner.search.engine.space_file import RETRAIN_DEFAULTS

        return {**RETRAIN_DEFAULTS, **(self.space.get("retrain") or {})}

    @functools.cached_property
    def backbone_specs(self):
        """The run's `hypermodels.registry.Backbones`: built-ins, ``keras:NAME`` and its own (its space's).

        A value of this config alone: loading another run changes nothing here. An own
        backbone whose file is gone or changed raises its reason when asked for.
        """
        from cxr_tuner.search.engine import space_file

        return space_file.run_backbones(self.space.get("backbones") or {}, str(self.layout.config))

    def replace(self, **changes) -> "RunConfig":
        """A copy with ``changes`` applied (the config itself never mutates)."""
        return dataclasses.replace(self, **changes)

    def save(self) -> None:
        """Writes ``config.json`` into the run directory.

        ``overwrite`` is an action, not a setting: it is saved as False so that
        later stages and resumes never start over because the first run did.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        saved = dataclasses.asdict(self.replace(overwrite=False))
        files.write_text(self.layout.config, json.dumps(saved, indent=2, sort_keys=True) + "\n")

    def check_resumable(self, saved: "RunConfig") -> None:
        """Refuses to resume a run that was started with different settings."""
        mine, theirs = dataclasses.asdict(self), dataclasses.asdict(saved)
        if mine["task"] == "auto":  # auto resumes whatever the data stage decided
            mine["task"] = theirs["task"]
        # With the same --time-budget, max_epochs is the plan's (at most the flag's): a resume keeps the saved one.
        planned = {"max_epochs"} if self.time_budget is not None and self.time_budget == saved.time_budget else set()
        differ = sorted(k for k in mine if k not in _RESUMABLE | planned and mine[k] != theirs[k])
        if differ:
            from cxr_tuner.search.engine.space_file import differences

            details = ", ".join(
                f"the search space ({'; '.join(differences(theirs[k], mine[k]))})" if k == "space"
                else f"{k}: {theirs[k]!r} -> {mine[k]!r}" for k in differ)
            raise UserError(
                f"{self.run_dir} holds a run with other settings ({details}). "
                "Use another --run-dir, repeat the original flags to resume, or --overwrite to start over."
            )

# The demo searches the pretrained path, as a real search does: mobilenet_025 from the
# ImageNet weights the package ships (offline), against a small CNN from scratch.
# Batches of 16 give the from-scratch demo models enough steps to learn in 8 epochs.
DEMO_DEFAULTS = dict(backbones=("vanilla_cnn", "mobilenet_025"), image_size=96, weights="imagenet",
                     max_epochs=8, batch_size=16, factor=3)
DATA_DEFAULTS = dict(backbones=("efficientnet_b0", "mobilenet_v2", "resnet50", "densenet121"),
                     image_size=224, weights="imagenet", max_epochs=9, batch_size=32, factor=3)
_FLAGS = {"backbones": "--backbones", "image_size": "--image-size", "batch_size": "--batch-size", "weights": "--weights",
          "max_epochs": "--max-epochs", "factor": "--factor"}


SHIFT_OBJECTIVES = ("clean", "mixed")
"""What trials are ranked on: the validation films' loss, or its mean with their re-rendered copies'."""
VAL_SOURCES = ("mixed", "apart")
"""How validation is drawn: by patient, or whole sources of the classes that have several."""
SHIFT_DEFAULTS = dict(intensity="standardize", shift_copies=2)
"""What a new job does against acquisition shift when its flags are left out (docs/shift.md)."""


def shift_settings(run_dir, overwrite: bool, **given) -> dict:
    """``intensity``, ``shift_copies`` and ``shift_objective`` for a job: the flags given; for those left out
    (None), a resumed run's own (what it was started with, or had before the settings existed), else the defaults.

    The library's ``RunConfig`` keeps films as stored and no copies; the command line's jobs train against shift.
    """
    layout = RunLayout(run_dir)
    saved = {}
    if not overwrite and layout.config.is_file():
        raw = files.read_json(layout.config, "start over with --overwrite")
        saved = {k: raw.get(k, getattr(RunConfig, k)) for k in ("intensity", "shift_copies", "shift_objective")
                 } if isinstance(raw, dict) else {}
    chosen = {k: v for k, v in given.items() if v is not None}
    for key, value in SHIFT_DEFAULTS.items():
        chosen.setdefault(key, saved.get(key, value))
    if "shift_objective" not in chosen and saved and chosen["shift_copies"] == saved["shift_copies"]:
        chosen["shift_objective"] = saved["shift_objective"]
    return chosen


def new_config(run_dir: str, data: str | None = None, space: str | Path | None = None, **given) -> RunConfig:
    """A config from the user's flags and space file; unset flags (None) take the file's or the data's defaults.

    Without ``data`` the run uses the synthetic demo set and ``DEMO_DEFAULTS``. A flag
    given beside a ``space`` file entry for the same setting must agree with it.

    Raises:
        UserError: A problem in the space file, a flag that disagrees with it, or a space
            that does not fit the backbones (nothing is written).
    """
    from cxr_tuner.search.engine import space_file

    defaults = DEMO_DEFAULTS if data is None else DATA_DEFAULTS
    given = {k: tuple(v) if k in ("backbones", "views") else v for k, v in given.items() if v is not None}
    read = space_file.read(space) if space is not None else None
    from_file = dict(read.settings) if read else {}
    for key, value in from_file.items():
        if given.get(key, value) != value:
            shown = ",".join(given[key]) if key == "backbones" else given[key]
            entry = "hyperparameters.backbone" if key == "backbones" else f"run.{key}"
            raise UserError(f"{_FLAGS[key]} {shown} disagrees with {read.path}'s {entry} = "
                            f"{space_file.toml_value(value)}; drop one of them.")
    settings = {**defaults, **from_file, **given}
    settings["backbones"] = tuple(settings["backbones"])
    source = str(read.path) if read else None
    settings["space"] = space_file.resolve(
        read.hyperparameters if read else {}, read.retrain if read else dict(space_file.RETRAIN_DEFAULTS),
        read.own if read else {}, settings["backbones"], settings["weights"], settings["image_size"], source)
    if settings.get("val_sources") == "apart" and settings.get("folds"):
        raise UserError("--val-sources apart holds sources out of validation; --folds divides train+val by patient. "
                        "Use one of them.")
    if "shift_objective" not in settings and "shift_copies" in settings:  # the flag left out: mixed where copies are
        settings["shift_objective"] = "mixed" if settings["shift_copies"] else "clean"
    for key, allowed in (("shift_objective", SHIFT_OBJECTIVES), ("val_sources", VAL_SOURCES)):
        if settings.get(key, allowed[0]) not in allowed:
            raise UserError(f"--{key.replace('_', '-')} {settings[key]} is not one of {', '.join(allowed)}.")
    if settings.get("shift_objective", "clean") != "clean" and not settings.get("shift_copies"):
        raise UserError("--shift-objective mixed ranks on re-rendered validation copies: give --shift-copies N "
                        "(1 or more) too.")
    return RunConfig(run_dir=str(run_dir), data=data, **settings)


def asks_keras(run_dir: str | Path | None = None, data: str | None = None, space: str | Path | None = None,
               backbones=None) -> bool:
    """Whether the run of these settings (as `new_config` makes it), or the run stored in ``run_dir``, has a backbone
    only Keras can describe: a ``keras:NAME`` one (read from its model) or one of its own (its ``.keras`` file checked).

    The built-in backbones are a table that loads no Keras, so `cxr-tuner space` prints a run
    of those without TensorFlow. A file that cannot be read answers False: what reads it next says what is wrong.
    """
    from cxr_tuner.hypermodels.backbones.spec import KERAS_PREFIX
    from cxr_tuner.search.engine import space_file

    try:
        if run_dir is not None:
            stored = files.read_json(RunLayout(run_dir).config, "")
            names, own = stored.get("backbones", ()), (stored.get("space") or {}).get("backbones")
        else:
            read = space_file.read(space) if space is not None else None
            names = backbones or (read.settings.get("backbones") if read else None) or \
                (DEMO_DEFAULTS if data is None else DATA_DEFAULTS)["backbones"]
            own = read.own if read else None
    except (UserError, AttributeError, TypeError):  # no run, or a damaged file: what reads it next says so
        return False
    return bool(own) or any(str(name).startswith(KERAS_PREFIX) for name in names)


def load_config(run_dir: str | Path) -> RunConfig:
    """Reads ``run_dir/config.json``.

    Raises:
        UserError: If the folder holds no run.
    """
    path = RunLayout(run_dir).config
    if not path.is_file():
        raise UserError(f"{run_dir} is not a run directory (no {path.name}); run `cxr-tuner search --run-dir {run_dir}` first.")
    raw = files.read_json(path, f"start over with `cxr-tuner search --run-dir {run_dir} --overwrite` and the run's flags")
    if not isinstance(raw, dict):
        raise UserError(f"{path} is damaged (not a JSON object); start over with `cxr-tuner search --run-dir {run_dir} --overwrite`.")
    known = {f.name for f in dataclasses.fields(RunConfig)}
    raw = {k: v for k, v in raw.items() if k in known}
    for key in ("backbones", "fractions", "class_names", "views"):
        raw[key] = tuple(raw.get(key, ()))
    raw["run_dir"] = str(run_dir)
    config = RunConfig(**raw)
    from cxr_tuner.search.engine import space_file

    if not config.space:  # a run saved before spaces existed searched the default one
        return config.replace(space=space_file.default_record(config.backbones, config.weights, config.image_size))
    return config
