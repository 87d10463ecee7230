"""The run directory's layout: every file and folder a stage writes or reads, named once.

Stages, the CLI and the tests reach the run directory through `RunLayout`; no
other module spells a run-directory path. Each stage's output records the
sha256 of the split it was made on (``split_sha256``); a later stage reading it
checks that against the current ``split.csv``, so nothing from an earlier split
is read as current.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from cxr_tuner.data import files
from cxr_tuner.data.errors import UserError

# Files inside each winner's folder (winners/<rank>-<trial id>/).
WINNER_MODEL = "model.keras"
WINNER_HISTORY = "history.json"
WINNER_HYPERPARAMETERS = "hyperparameters.json"
WINNER_OUT_OF_FOLD = "out_of_fold.npz"  # with --folds: the fold models' probabilities on the rows they did not see
WINNER_VALIDATION = "validation.npz"  # without: the winner's probabilities on the validation split
FINAL_DIR = "final"  # winners/final: the final model (ensemble, temperature, operating point)
FINAL_RECORD = "final.json"  # inside it: what the final model is, fitted on validation
SPLIT_STAMP = "split_sha256"
MODEL_STAMP = "model_sha256"  # an evaluation's final model: figures of another model are not current
EXPORT_FORMATS = ("keras", "savedmodel", "tflite")  # what export writes, in export/
# KerasTuner writes <directory>/<project_name>/...: the run directory and this name.
TUNER_PROJECT = "tuner"


class RunLayout:
    """The paths of one run directory.

    Args:
        root: The run directory.
    """

    def __init__(self, root):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"RunLayout({str(self.root)!r})"

    # Settings and the data stage.
    config = property(lambda self: self.root / "config.json")
    split = property(lambda self: self.root / "split.csv")
    skipped = property(lambda self: self.root / "skipped.csv")
    audit = property(lambda self: self.root / "audit.csv")
    findings = property(lambda self: self.root / "data.json")  # what the data stage found: counts, audit
    demo_data = property(lambda self: self.root / "demo-data")
    # Caches: decoded images per size, activations per backbone, external sets' decoded images.
    cache = property(lambda self: self.root / "cache")
    activations = property(lambda self: self.root / "cache" / "activations")
    external_cache = property(lambda self: self.root / "cache" / "external")
    # The search.
    tuner = property(lambda self: self.root / TUNER_PROJECT)
    oracle = property(lambda self: self.root / TUNER_PROJECT / "oracle.json")
    tensorboard = property(lambda self: self.root / "tensorboard")
    memory = property(lambda self: self.root / "memory.csv")
    worker_logs = property(lambda self: self.root / "workers")
    best = property(lambda self: self.root / "best_hyperparameters.json")
    plan = property(lambda self: self.root / "plan.json")  # --time-budget: the plan, calibration and what happened
    lock = property(lambda self: self.root / "run.lock")
    # While a distributed search's chief extracts activations: workers that see it join in.
    extraction = property(lambda self: self.root / "extraction.lock")
    # Later stages.
    winners = property(lambda self: self.root / "winners")
    winners_summary = property(lambda self: self.root / "winners" / "summary.json")
    final = property(lambda self: self.root / "winners" / FINAL_DIR)
    final_record = property(lambda self: self.root / "winners" / FINAL_DIR / FINAL_RECORD)
    report = property(lambda self: self.root / "report")
    metrics = property(lambda self: self.root / "report" / "metrics.json")
    gradcam_images = property(lambda self: self.root / "report" / "gradcam-images")
    export = property(lambda self: self.root / "export")
    summary = property(lambda self: self.root / "summary.json")  # per-stage wall times and floors

    def trial(self, trial_id: str) -> Path:
        """KerasTuner's ``trial.json`` of one trial."""
        return self.tuner / f"trial_{trial_id}" / "trial.json"

    def trial_checkpoint(self, trial_id: str) -> Path:
        """KerasTuner's best-epoch weights of one trial (what a warm-started retrain starts from)."""
        return self.tuner / f"trial_{trial_id}" / "checkpoint.weights.h5"

    def fold_checkpoint(self, trial_id: str, fold: int) -> Path:
        """With ``--folds``: the best epoch's weights of one fold's model of a trial (Hyperband continues it)."""
        return self.tuner / f"trial_{trial_id}" / f"fold_{fold + 1}.weights.h5"

    def worker_log(self, index: int) -> Path:
        """The log of local worker ``index`` (``search --workers N``)."""
        return self.worker_logs / f"local-{index}.log"

    def external_report(self, data) -> Path:
        """Where ``evaluate --data DATA`` writes by default."""
        return self.report / f"external-{Path(data).stem}"

    def derived(self) -> tuple[Path, ...]:
        """Everything a run makes from its data and settings, except the content-keyed caches.

        ``--overwrite`` removes these, so no later stage can read a result of the
        run it replaces. ``cache/`` stays: its entries are keyed by the pixels and
        weights they hold and are checked against the files on every use.
        """
        return (self.config, self.split, self.skipped, self.audit, self.findings, self.tuner, self.tensorboard,
                self.memory, self.worker_logs, self.best, self.plan, self.winners, self.report, self.export, self.summary)

    def clear_derived(self) -> None:
        """Removes `derived` (start over)."""
        for path in self.derived():
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)

    # Freshness: which split an output was made on.
    def split_digest(self) -> str:
        """sha256 of the current ``split.csv``.

        Raises:
            UserError: If the run has no split yet.
        """
        if not self.split.is_file():
            raise UserError(f"{self.root} has no {self.split.name}; run `cxr-tuner search --run-dir {self.root}` first.")
        return files.sha256_file(self.split)

    def read_current(self, path: Path, remedy: str) -> dict:
        """Reads a stage's JSON output, refusing one made on another split than the current one.

        Args:
            path: The output (e.g. `best`, `winners_summary`, `metrics`).
            remedy: What to run to make it again, e.g. "run `cxr-tuner retrain RUN`".
        """
        content = files.read_json(path, remedy)
        if not isinstance(content, dict) or content.get(SPLIT_STAMP) != self.split_digest():
            raise UserError(f"{path} was made on another split than the current {self.split.name} "
                            f"(the run started over since); {remedy}.")
        return content

    def best_winner(self) -> Path:
        """The folder of the rank-1 retrained winner.

        Raises:
            UserError: If there are no winners of the current split, or their files are gone.
        """
        remedy = f"run `cxr-tuner retrain {self.root}`"
        summary = self.read_current(self.winners_summary, remedy)
        try:
            folder = self.winners / summary["winners"][0]["dir"]
        except (KeyError, IndexError, TypeError):
            raise UserError(f"{self.winners_summary} is damaged (no ranked winner); {remedy}.") from None
        for name in (WINNER_MODEL, WINNER_HISTORY, WINNER_HYPERPARAMETERS):
            if not (folder / name).is_file():
                raise UserError(f"{folder / name} is missing; {remedy}.")
        return folder

    def has_final(self) -> bool:
        """Whether the run has an assembled final model (``search.final.assemble.assemble``)."""
        return self.final_record.is_file()

    def final_model(self) -> Path:
        """The folder of the final model when assembled, else of the rank-1 winner (see `best_winner`)."""
        if self.has_final():
            self.read_current(self.final_record, f"run `cxr-tuner evaluate {self.root} --ensemble auto`")
            return self.final
        return self.best_winner()
