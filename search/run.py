"""The search stage: data -> Hyperband on the class-weighted validation loss -> best trials."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Callable

import tensorflow as tf

from cxr_tuner.data import files, labels
from cxr_tuner.data.errors import UserError
from cxr_tuner.hypermodels import precision
from cxr_tuner.hypermodels.weights import resolve_weights
from cxr_tuner.search.tuning import cache_plan
from cxr_tuner.search.engine import console, dataset, lock, timing
from cxr_tuner.search.tuning.activations import trial_hypermodel
from cxr_tuner.search.engine.devices import deterministic_ops, devices_line
from cxr_tuner.search.distributed import local, protocol as distributed, worker
from cxr_tuner.search.distributed.chief import run_chief
from cxr_tuner.search.engine.config import RunConfig, load_config
from cxr_tuner.search.tuning.hparams import searched_values
from cxr_tuner.search.engine.layout import SPLIT_STAMP, RunLayout
from cxr_tuner.search.tuning.tuner import make_tuner


def check_inputs(config: RunConfig) -> None:
    """Refuses a missing data path or weights that cannot be had, before the run directory is touched."""
    if config.data is not None and not Path(config.data).exists():
        # Before the weights: a wrong path is the first thing to fix, and costs no download.
        raise UserError(f"Data path {config.data} does not exist: pass a folder of images or a CSV.")
    if config.data is not None and (config.overwrite or not config.layout.split.is_file()):
        # A refused label file (bad column, value or path, no label) is said before the run directory exists.
        labels.read(config.data, config.task, config.uncertain, config.views or None)
    for name in config.backbones:
        resolve_weights(config.backbone_specs.get(name), config.weights, config.image_size)


def start_run(config: RunConfig) -> None:
    """Prepares the run directory: start over (``overwrite``) or check the run is resumable.

    Raises:
        UserError: If the tuner's saved state is damaged, or was made with other settings.
    """
    if config.overwrite:
        config.layout.clear_derived()
        return
    if config.layout.config.is_file():
        config.check_resumable(load_config(config.path))
    _check_tuner_state(config)


def _check_tuner_state(config: RunConfig) -> None:
    """KerasTuner writes its own files in place; a half-written one would fail deep in its reload."""
    layout = config.layout
    remedy = (f"the search cannot resume; start over with `cxr-tuner search --run-dir {config.run_dir} "
              "--overwrite` and the run's flags")
    for path in [layout.oracle, *sorted(layout.tuner.glob("trial_*/trial.json"))]:
        if path.is_file():
            files.read_json(path, remedy)


def run_search(config: RunConfig, log: Callable[[str], None] = print, chief: str | None = None,
               worker_timeout: float = 120.0, strategy: str | None = None, workers: int = 1, budget=None) -> dict:
    """Runs (or resumes) the search and writes ``best_hyperparameters.json``.

    Args:
        chief: ``HOST:PORT``: be the chief of a distributed search, serving trials
            to :func:`run_worker` processes and running none; None runs them here.
        worker_timeout: With ``chief``: seconds without a sign of life after which
            a worker's trial goes to another worker.
        strategy: ``"mirrored"``: each trial trains under ``tf.distribute.MirroredStrategy``.
        workers: Trials at once on this machine: more than 1 starts that many
            worker processes here and serves them as the chief (:mod:`search.distributed.local`).
        budget: A `search.tuning.budget.driver.Budget` (``--time-budget``): after the extraction it
            calibrates and plans ``max_epochs``, and the search stops at its deadline.

    Returns:
        The content of ``best_hyperparameters.json``.

    Raises:
        UserError: If no trial completed (the trial lines say why).
    """
    local.check_count(workers, chief)
    check_inputs(config)
    with lock.run_lock(config.run_dir, "search", log), deterministic_ops():
        return _search(config, log, chief, worker_timeout, strategy, workers, budget)


def _search(config: RunConfig, log, chief, worker_timeout, strategy, workers, budget=None) -> dict:
    # Concrete before the resume check and config.json: every later stage and worker reads it.
    config = config.replace(precision=precision.resolve(config.precision))
    start_run(config)
    log(devices_line(config.precision))
    for line in console.weights_lines(config):  # where each backbone starts from: ImageNet (shipped?) or scratch
        log(line)
    config.layout.extraction.unlink(missing_ok=True)  # a killed chief's: workers must not join it
    # Started first: they load TensorFlow while this process decodes and caches.
    with local.local_workers(config.path, workers, log, strategy) if workers > 1 else \
            contextlib.nullcontext() as helpers:
        started = time.perf_counter()
        data = dataset.prepare(config)
        config = data.config
        config.save()
        timing.record(config.layout, "data", time.perf_counter() - started,
                      note=f"{len(data.images)} images read, split and decoded (or read from the decoded cache)")
        _log_data(data, log)
        if config.folds:  # refused before any activation is computed
            log(f"folds: {config.folds} patient-grouped folds of train+val, validation sizes "
                + ", ".join(str(len(val)) for _, val in data.folds()) + "; test untouched")
        hypermodel, cache = trial_hypermodel(data)
        _check_cache(cache, config, log)
        log(shift_line(config, hypermodel.datasets.copies))
        started = time.perf_counter()
        with _failed_trials_as_user_error():
            if chief is None and helpers is None:
                cache.warm(config.backbones)  # before the trials, so its time is its own
                timing.record(config.layout, "extraction", time.perf_counter() - started,
                              note="one forward pass of each frozen backbone (it is its own floor)")
                if budget is not None:  # after the extraction: its time counts against the budget
                    config = budget.plan_search(config, hypermodel, cache, log)
                    config.save()  # with the planned max_epochs, which the retrain reads
                started = time.perf_counter()
                distributed.resume_across_modes(config.layout.tuner, distributed.LOCAL_ID)
                tuner = make_tuner(config, hypermodel, distributed.distribution_strategy(strategy, log))
                if budget is not None:
                    budget.watch(tuner)
                tuner.search(epochs=config.max_epochs, verbose=0)
            else:
                _extract_with_workers(config, cache, log)
                timing.record(config.layout, "extraction", time.perf_counter() - started,
                              note="shared with the workers that joined")
                started = time.perf_counter()
                tuner = run_chief(config, hypermodel, chief or helpers.address, worker_timeout, log,
                                  helpers.check if helpers else None)
    floor = tuner.clock.floor() if getattr(tuner, "clock", None) else None
    timing.record(config.layout, "search", time.perf_counter() - started, floor,
                  **({} if floor else {"note": "trials ran in the workers: their epochs are not timed here"}))
    best = best_trials(tuner)
    best[SPLIT_STAMP] = config.layout.split_digest()
    files.write_json(config.layout.best, best)
    if best["best"] is None:
        raise UserError(f"No trial of {best['trials']} completed; see the trial lines above for why.")
    return best


def run_worker(run_dir: str, chief: str, worker_id: str | None = None, strategy: str | None = None,
               wait: float = 6 * 3600.0, threads: int | None = None, log: Callable[[str], None] = print) -> str:
    """Runs trials of the distributed search that ``chief`` (``HOST:PORT``) serves, until it is done.

    The settings come from ``run_dir/config.json``, written by the chief before it
    serves, so the two cannot disagree; the split and the caches are read, not rebuilt.
    ``threads``: how many threads each TensorFlow operation computes on (default: all cores).

    Returns:
        This worker's id.
    """
    worker_id = distributed.check_worker_id(worker_id) if worker_id else distributed.default_worker_id()
    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)  # before TensorFlow's first operation
    extraction = RunLayout(run_dir).extraction
    serving = worker.wait_for_chief(chief, wait, log, lambda: lock.live_holder(extraction) is not None)
    config = load_config(run_dir)  # with the precision the chief resolved
    log(devices_line(config.precision))
    worker.check_data_visible(config)
    hypermodel, cache = trial_hypermodel(dataset.prepare(config, progress=False), progress=False)
    if not serving:
        # The chief wrote config.json and the decoded cache before it began extracting.
        log(f"worker {worker_id}: joining the chief's activation extraction")
        cache.extractor, cache.log = worker_id, log
        cache.warm(config.backbones)
        worker.wait_for_chief(chief, wait, log)
    log(f"worker {worker_id}: running trials for {run_dir}")
    with _failed_trials_as_user_error(), deterministic_ops():
        worker.serve_trials(config, hypermodel, chief, worker_id, strategy, log)
    return worker_id


def _extract_with_workers(config: RunConfig, cache, log: Callable[[str], None]) -> None:
    """Fills the activation cache before serving, with every worker that joins: trials only read it.

    Workers that find ``extraction.lock`` (held, with a heartbeat, while this runs) take
    shards of each pass (:mod:`search.tuning.extraction`); the others join when it is done.
    """
    before = {backbone: cache.extraction_record(backbone) for backbone in config.backbones}
    cache.extractor = distributed.CHIEF_ID
    lock.take(config.layout.extraction, "search (activation extraction)")
    with lock.kept(config.layout.extraction):
        cache.warm(config.backbones)
    for backbone in config.backbones:
        record = cache.extraction_record(backbone)
        if record is not None and record != before[backbone]:
            shards = ", ".join(f"{name} {count}" for name, count in record["shards"].items())
            log(f"activations of {backbone}: {record['seconds']:.1f} s (shards: {shards})")


def _check_cache(cache, config: RunConfig, log: Callable[[str], None]) -> None:
    """Prints the activation cache's size before it is written; refuses when the disk cannot hold it."""
    cache_plan.check_and_report(cache.plan, cache.folder, lambda backbone: cache_plan.entry_bytes(cache.entry(backbone)),
                                log, config.image_size, config.cache_budget_gb)


@contextlib.contextmanager
def _failed_trials_as_user_error():
    try:
        yield
    except RuntimeError as error:
        # KerasTuner gives up after several failed trials in a row (something systematic,
        # not bad luck) with a RuntimeError that carries the last trial's traceback.
        if "consecutive failures" not in str(error):
            raise
        lines = [line for line in str(error).splitlines() if line.strip()]
        raise UserError(
            f"The search stopped: {lines[0].rstrip('.').lower().replace('number of ', '')} "
            f"(last: {lines[-1]}). The trial lines above say why; fix that (e.g. a smaller "
            "--batch-size or --image-size when out of memory) and run the same command to "
            "resume: finished trials are kept.") from None


def best_trials(tuner, top: int = 5) -> dict:
    """The best trials with distinct hyperparameters, best first.

    Hyperband trains one configuration in several rounds, each its own trial;
    only the best-scoring trial of each configuration is kept. ``best_per_backbone``
    holds each searched backbone's best, for the pretrained/from-scratch comparison.
    """
    ranked, seen, per_backbone = [], set(), {}
    objective = tuner.oracle.objective.name
    for trial in tuner.oracle.get_best_trials(num_trials=len(tuner.oracle.trials)):
        values = searched_values(trial.hyperparameters.values)
        key = json.dumps(values, sort_keys=True)
        if key not in seen and trial.score is not None:
            seen.add(key)
            ranked.append({"trial_id": trial.trial_id, objective: trial.score,
                           "epochs": trial.hyperparameters.values.get("tuner/epochs"),
                           "hyperparameters": values})
            if "backbone" in values:
                per_backbone.setdefault(values["backbone"], ranked[-1])
    return {"objective": {"name": objective, "direction": "min"},
            "trials": len(tuner.oracle.trials), "best": ranked[0] if ranked else None,
            "top": ranked[:top], "best_per_backbone": per_backbone}


def _log_data(data: dataset.RunData, log: Callable[[str], None]) -> None:
    config = data.config
    counts = data.findings.counts
    log(f"images: {counts['found']} found, {counts['used']} used, {counts['skipped']} skipped "
        f"(see {config.layout.skipped})")
    for line in data.findings.labels.get("lines", []) + data.task.data_lines(data):
        log(line)
    if data.findings.audit:
        log(audit_line(data.findings.audit, config.layout.audit, demo=config.data is None))
    for line in ([f"ignored manifest columns: {', '.join(data.findings.sources['ignored_columns'])}"]
                 if data.findings.sources.get("ignored_columns") else []) + data.findings.sources.get("lines", []):
        log(line)
    if data.findings.fractions.get("warning"):
        log(data.findings.fractions["warning"])


def audit_line(counts: dict, where, demo: bool) -> str:
    """The data stage's line of the leakage audit's counts; on the demo set, why it finds look-alikes at all."""
    line = "leakage audit of the split: " + ", ".join(f"{k} {v}" for k, v in counts.items()) + f" (groups in {where})"
    if demo and (counts.get("near_duplicate_groups") or counts.get("cross_label_groups")):
        line += ("; on the demo phantoms these are look-alikes by chance: a faint opacity can bring a diseased "
                 "phantom within the perceptual hash's reach of a Normal one (docs/first-run.md)")
    return line


def shift_line(config, copies) -> str:
    """What the run does against acquisition shift: intensity step, training copies, objective."""
    intensity = ("each film standardised inside the model" if config.intensity == "standardize"
                 else "films as stored")
    if copies is None:
        return f"acquisition shift: {intensity}; no re-rendered training copies (--shift-copies 0)"
    objective = ("ranked on the mean of the validation films' and their copies' loss"
                 if config.shift_objective == "mixed" else "ranked on the validation films alone")
    return (f"acquisition shift: {intensity}; {copies.copies} re-rendered copies of each of "
            f"{len(copies.sources) // copies.copies} train+val films (every epoch shows a film or one copy), "
            f"{objective}")
