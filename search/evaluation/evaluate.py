"""Evaluate the final model once on the test split (or an external labelled set).

One forward pass gives the final model's answer and, when assembled, its plain average
and its rank-1 member's; the run's task turns them into figures, pictures to draw,
Grad-CAM pages and report text; the shortcut checks add the probe, the chest energy
and the figures per source; the stress test scores the films re-rendered as other
sources make them (`search.evaluation.stress`). All of it is one record
(`search.evaluation.record`), which `search.evaluation.report.write` writes into the
output folder. External sets given with the test split (``search --external``) are
scored after it, and their figures join its report. This is the only stage that reads
the test split's labels.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import keras
import numpy as np

from cxr_tuner.data import audit, files, labels as label_files, shift
from cxr_tuner.data.errors import UserError
from cxr_tuner.hypermodels.compat import keras_compat
from cxr_tuner.hypermodels.ensemble import CALIBRATION_LAYER, ENSEMBLE_MEAN
from cxr_tuner.search.engine import dataset, timing
from cxr_tuner.search.engine.config import RunConfig, load_config
from cxr_tuner.search.engine.layout import (MODEL_STAMP, SPLIT_STAMP, WINNER_HISTORY, WINNER_HYPERPARAMETERS,
                                            WINNER_MODEL)
from cxr_tuner.search.engine.lock import run_lock
from cxr_tuner.search.engine.task import Task, task_named, task_of
from cxr_tuner.search.engine.task_base import Films
from cxr_tuner.search.evaluation import gradcam, probe, report, shortcuts
from cxr_tuner.search.evaluation.record import Evaluation
from cxr_tuner.search.evaluation.stress import stress_test
from cxr_tuner.search.figures.shift_report import external_markdown, stress_line, stress_markdown
from cxr_tuner.search.tuning.hparams import searched_values


def evaluate(config: RunConfig, data: str | None = None, out=None, layer: str | None = None,
             log: Callable[[str], None] = print, externals=()) -> dict:
    """Evaluates the final model (the rank-1 winner before one is assembled) and writes the report.

    Args:
        config: The run's config (from ``load_config``).
        data: Another labelled folder or label file with the run's classes (findings); ``None``
            uses the run's test split.
        out: Output folder; default ``RUN_DIR/report`` (``RUN_DIR/report/external-<name>``
            for ``data``).
        layer: Grad-CAM layer; default the backbone's from the registry.
        externals: With the test split: labelled sets scored after it, each into its own
            ``external-<name>`` folder, their figures beside the test split's in its report.

    Returns:
        The metrics written to ``metrics.json``.
    """
    with run_lock(config.run_dir, "evaluate", log), ThreadPoolExecutor(2) as pool:
        started = time.perf_counter()
        task = task_of(config)
        layout = config.layout
        out = Path(out or (layout.report if data is None else layout.external_report(data)))
        evaluation, floor = _evaluate(config, task, data, out, layer, log, pool)
        sets = []
        for path in externals:  # after the test split, each written whole before the next
            where = layout.external_report(path)
            found = _evaluate(config, task, path, where, layer, log, pool)[0]
            report.write(where, found, layout)
            _closing_lines(task, found, where, f"{where.name}: ", log)
            sets.append((where, found.metrics))
        if sets:
            _beside_external_sets(evaluation, task, sets, out)
        metrics = report.write(out, evaluation, layout)
        _closing_lines(task, evaluation, out, "", log)
        if data is None:  # an external set is not a stage of the run
            # The stress test's own time (rendering and one pass per family) kept beside the stage's.
            timing.record(layout, "evaluate", time.perf_counter() - started, floor,
                          stress_seconds=evaluation.metrics["stress"]["seconds"],
                          **({"note": f"with {len(sets)} external set(s)"} if sets else {}))
        return metrics


def _closing_lines(task: Task, evaluation: Evaluation, out: Path, prefix: str, log) -> None:
    for line in task.closing_lines(evaluation.metrics, evaluation.checks, out):
        log(prefix + line)
    log(prefix + stress_line(evaluation.metrics["stress"]))


def check_external_paths(config: RunConfig, paths) -> None:
    """Refuses a missing external set, or two whose reports would share a folder (before the run directory is made)."""
    folders = {}
    for path in paths:
        if not Path(path).exists():
            raise UserError(f"--external {path} does not exist: pass a labelled folder or label file.")
        folder = config.layout.external_report(path)
        if folder in folders:
            raise UserError(f"--external {folders[folder]} and {path} would both report into {folder}; "
                            "give each set a folder or file of its own name.")
        folders[folder] = path


def check_external_labels(config: RunConfig, paths) -> None:
    """Refuses an external set whose labels do not fit the run's classes (findings), before the search starts.

    Reads labels only: the run's from its saved config or its data's label file, each set's from its own.
    """
    if not paths:
        return
    layout = config.layout
    if not config.overwrite and layout.split.is_file() and layout.config.is_file():
        saved = load_config(config.run_dir)
        task, names = task_of(saved), saved.class_names
    else:
        table = label_files.read(dataset.data_root(config), config.task, config.uncertain, config.views or None)
        task, names = task_named(table.task), table.names
    for path in paths:
        task.check_external(config, path, names)


def _beside_external_sets(evaluation: Evaluation, task: Task, sets: list[tuple[Path, dict]], out: Path) -> None:
    """Each external set's headline figures into the test split's metrics and report (one table)."""
    metrics = evaluation.metrics
    metrics["external"] = {
        folder.name.removeprefix("external-"): {
            "data": found["source"]["data"], "n": found["n"], "figures": task.headline_metrics(found),
            "worst": found["stress"]["as_filmed"]["worst"], "stress_worst_family": found["stress"]["worst_family"],
            "report": str(folder / "report.html"), "metrics": str(folder / "metrics.json")}
        for folder, found in sets}
    rows = [("test split (same sources)", metrics, None)]
    rows += [(folder.name.removeprefix("external-"), found, folder) for folder, found in sets]
    evaluation.parts.append(external_markdown(rows, task.comparison_cells, out))


def _evaluate(config: RunConfig, task: Task, data, out: Path, layer, log, pool) -> tuple[Evaluation, dict]:
    """The record of one set, and the floor of its evaluation (the final model's forward passes).

    ``pool``: a thread pool of at least two workers: the rank-1 member loads beside the final
    model's pass, and the probe runs while the report draws (`Evaluation.settle`).
    """
    layout = config.layout
    winner = layout.best_winner()
    final = layout.final_model()  # the calibrated (ensemble) model when assembled, else the winner
    loaded = pool.submit(_load, winner) if final != winner else None
    model = _load(final)
    # Once: the test split's films, and the training films the probe learns from.
    run_data = dataset.prepare(config, progress=False) if data is None else None
    films = _test_split(run_data) if data is None else task.external_films(config, data, log)
    names = list(config.class_names)
    log(task.opening_line(winner.name, films, data is not None, names))
    record = None
    # One traced predict for the films as filmed and the stress test's renderings: an assembled model's
    # answer, its plain average and its rank-1 member's come out of the same pass.
    if final != winner:
        predictor = keras.Model(model.input, _outputs(model))
        record = layout.read_current(layout.final_record, f"run `cxr-tuner evaluate {config.run_dir}`")
    else:
        predictor = model
    test_pass, stress_pass = timing.BatchClock(), timing.BatchClock()
    predict = lambda images, clock: predictor.predict(images, batch_size=config.batch_size, verbose=0,
                                                      callbacks=[clock.callback()])
    found = predict(films.images, test_pass)
    probs, raw, single = (np.asarray(p, np.float64) for p in found) if record is not None else \
        (np.asarray(found, np.float64),) * 3
    metrics = task.test_metrics(films, probs, names, record, config.seed)
    metrics["source"] = {"model": str(final / WINNER_MODEL), "data": data or "test split of split.csv"}
    metrics[SPLIT_STAMP] = layout.split_digest()
    metrics[MODEL_STAMP] = files.sha256_file(final / WINNER_MODEL)  # an older set's figures are not this model's
    first = (lambda images: predict(images, stress_pass)[0]) if record is not None else \
        (lambda images: predict(images, stress_pass))
    metrics["stress"] = stress_test(first, task, films, probs, names, metrics, config.seed)[0]
    pictures, sections = {}, {}
    if record is not None:
        found, sections, pictures = task.final_figures(record, films, probs, raw, single, names, metrics)
        metrics.update(found)
    # Grad-CAM explains the rank-1 member, with its own probabilities.
    member = loaded.result() if loaded is not None else model
    explainer = gradcam.Traced(gradcam.gradcam_model(member, layer or gradcam.default_layer(member,
                                                                                          config.backbone_specs)))
    pages = task.gallery_pages(films, single, names, metrics)
    checks, answers = _shortcut_checks(task, run_data, explainer, films, probs, single, names, out)
    pages += [checks.pop(_LEAST_INSIDE)] if _LEAST_INSIDE in checks else []
    maps = {page.file: _heatmaps(explainer, films.images, page, answers, log) for page in pages}
    labels = dataset.DataFindings.load(layout)
    model_section = {"Model": _model_section(winner)}
    text = lambda checks: {**task.report_sections(checks, out, labels.labels if labels else {}, config),
                           **model_section, **sections}
    # The probe's passes and its head run while the pictures are drawn; its figures then join the checks.
    probed = pool.submit(_probed, task, run_data, member, films, names, config.seed, checks, text) \
        if run_data is not None else None
    evaluation = Evaluation(
        title=task.report_title(winner.name), metrics=metrics,
        predictions=task.prediction_table(films, probs, names, metrics),
        history=json.loads((winner / WINNER_HISTORY).read_text()),
        pictures={**task.pictures(films, probs, names, metrics), **pictures},
        images=np.asarray(films.images), pages=pages, maps=maps, gallery=task.gallery_text(), checks=checks,
        parts=task.report_parts(metrics) + [stress_markdown(metrics["stress"])],
        sections=text(checks) if probed is None else {}, test_split=data is None, pending=probed)
    return evaluation, _floor(len(films.images), test_pass, stress_pass)


def _floor(films: int, test_pass: timing.BatchClock, stress_pass: timing.BatchClock) -> dict:
    """Evaluate's floor: the final model's passes over the test films and the stress test's renderings of
    them, each at its fastest batch's rate (the renderings are drawn beside the passes)."""
    what = f"one forward pass of the final model over the {films} test films"
    rate = "at the fastest batch's rate"
    return {"seconds": test_pass.seconds + stress_pass.seconds,
            "what": f"{what} ({test_pass.seconds:.1f} s) and one over each of their {len(shift.FAMILIES)} "
                    f"stress-test re-renderings ({stress_pass.films} films, {stress_pass.seconds:.1f} s), {rate}",
            "test_pass": {"seconds": test_pass.seconds, "what": f"{what}, {rate}"}}


def _load(folder: Path) -> keras.Model:
    # compile=False: predicted with only; a winner's saved optimizer would be restored for nothing (and warn).
    return keras.saving.load_model(folder / WINNER_MODEL, compile=False)


def _outputs(model: keras.Model) -> list:
    """An assembled model's output, its uncalibrated average and its rank-1 member's output."""
    raw = model.get_layer(CALIBRATION_LAYER).input
    if ENSEMBLE_MEAN not in [layer.name for layer in model.layers]:  # one member, kept flat
        return [model.output, raw, raw]
    # The mean's inputs are the members' outputs, not in rank order (from-scratch members come first).
    first = [t for t in model.get_layer(ENSEMBLE_MEAN).input if keras_compat.producer(t).name == "member_1"]
    return [model.output, raw, first[0]]


def _test_split(run_data: dataset.RunData) -> Films:
    # config.json always saves overwrite=False, so this reads the split the search saved.
    rows = run_data.indices("test")
    examples = [run_data.examples[i] for i in rows]
    return Films(run_data.images[rows], run_data.labels[rows], [e.path for e in examples],
                 [e.source for e in examples], audit.leak_groups(examples, run_data.images[rows]))


def _shortcut_checks(task: Task, run_data, explainer, films: Films, probs, single, names,
                     out: Path) -> tuple[dict, tuple | None]:
    """``shortcuts.json`` but the probe: figures per source; on the test split also the chest energy.

    Returns:
        The checks (the page of the films least inside the chest under ``_LEAST_INSIDE``, to take out
        before writing) and, where the task measures the chest energy, every film's explained output
        with its heatmap: ``(outputs, heatmaps)``, which the Grad-CAM pages reuse.
    """
    checks = {"per_source": task.per_source(films, probs, names)}
    if run_data is None:  # an external set: no training films to probe with
        return checks, None
    checks["chest_box"] = probe.chest_box()
    outputs = task.energy_outputs(single)
    if outputs is None:
        return checks, None
    # Every film's heatmap of its answer, once: the energy and the pages of those answers reuse them.
    images = np.asarray(films.images)
    every = gradcam.all_heatmaps(explainer, images, outputs)
    checks["energy"], page = task.energy_figures(shortcuts.energy_shares(explainer, images, maps=every), films,
                                                 single, names, probe.chest_area())
    if page is not None:
        checks["least_inside_gallery"] = str(out / "gradcam" / page.file)
        checks[_LEAST_INSIDE] = page
    checks["source_warnings"] = _source_warnings(run_data)
    return checks, (outputs, every)


def _probed(task: Task, run_data, member, films: Films, names, seed: int, checks: dict, text) -> dict:
    """The checks with the chest-hidden probe's scores (in ``shortcuts.json``'s order), and the sections they give."""
    train = run_data.indices("train")
    found = probe.chest_hidden_probe(member, task, run_data.images[train], run_data.labels[train], films, names,
                                     seed=seed)
    checks = {"per_source": checks["per_source"], "probe": found,
              **{key: value for key, value in checks.items() if key != "per_source"}}
    return {"checks": checks, "sections": text(checks)}


_LEAST_INSIDE = "least_inside_page"


def _heatmaps(explainer, images, page, answers: tuple | None, log) -> np.ndarray:
    """A page's heatmaps, taken from every film's heatmap of its answer where the page explains the same outputs."""
    if page.listed:
        log(f"grad-cam: {page.caption} ({len(page.rows)} images)")
    if answers is not None and np.array_equal(answers[0][page.rows], page.outputs):
        return answers[1][page.rows]
    return gradcam.all_heatmaps(explainer, np.asarray(images)[page.rows], page.outputs)


def _source_warnings(run_data) -> list[str]:
    audit = run_data.findings.sources.get("audit")
    return audit["warnings"] if audit else []


def _model_section(winner: Path) -> str:
    values = json.loads((winner / WINNER_HYPERPARAMETERS).read_text())["values"]
    return "\n".join(f"- {name}: {value}" for name, value in searched_values(values).items())
