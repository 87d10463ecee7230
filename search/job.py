"""The whole job: search, retrain the winners, assemble the final model, evaluate it once, export it."""

from __future__ import annotations

import time
from typing import Callable

from cxr_tuner.data.errors import UserError
from cxr_tuner.search.engine import console, timing
from cxr_tuner.search.engine.config import RETRAIN_FROM_DEFAULT, RunConfig, load_config
from cxr_tuner.search.engine.lock import run_lock
from cxr_tuner.search.run import check_inputs, run_search
from cxr_tuner.search.figures.text import number_text, value_text


def run_job(config: RunConfig, retrain: bool = True, augment: bool = False, ensemble: int | None = None,
            point: str | None = None, log: Callable[[str], None] = print, started: float | None = None,
            refit: bool = False, externals=(), retrain_from: str | None = None, **search_options) -> dict:
    """Runs (or resumes) the search and, with ``retrain``, the stages after it.

    Args:
        config: The run's settings (from ``new_config``).
        retrain: Go on after the search: retrain the top configurations, evaluate
            the best on the test split (with Grad-CAM galleries) and export it.
        augment: Retrain with augmentation (on images); without, on the cached activations.
        retrain_from: Where the winners' retrain starts: ``search`` (their search weights) or
            ``scratch``; None: the retrain's default (:func:`search.final.retrain.retrain`).
        ensemble: Winners the final model averages; None chooses on validation
            (see :func:`search.final.assemble.assemble`).
        point: The operating point, ``CLASS:sensitivity=X`` / ``specificity=X`` / ``off``;
            None: COVID at sensitivity 0.95 when there is such a class.
        refit: Train the final model's members again on train+val (:mod:`search.final.refit`).
        externals: Labelled sets (folders or label files) the final model is scored on after the
            test split; refused before the search when missing or not of the run's classes.
        started: ``time.monotonic()`` when the process (or the command) began: with
            ``config.time_budget`` the budget counts from there (default: now).
        search_options: ``chief``, ``worker_timeout``, ``strategy``, ``workers``
            (see :func:`search.run.run_search`).

    Returns:
        The content of ``best_hyperparameters.json``.
    """
    # Refused before anything is written.
    budget = _budget(config, retrain, augment, started, search_options, retrain_from, externals)
    check_inputs(config)  # before the run directory is made for the lock
    externals = tuple(str(path) for path in externals)
    if externals:
        if not retrain:
            raise UserError("--external scores the final model, which --no-retrain does not make: drop one of "
                            "them (or score a set later with `cxr-tuner evaluate RUN --data PATH`).")
        from cxr_tuner.search.evaluation.evaluate import check_external_paths

        check_external_paths(config, externals)
    with run_lock(config.run_dir, "search", log):  # one holder for every stage of the job
        return _run_stages(config, retrain, augment, (ensemble, point, refit), log, search_options, budget,
                           externals, retrain_from)


def _run_stages(config: RunConfig, retrain: bool, augment: bool, final: tuple, log, search_options: dict,
                budget=None, externals=(), retrain_from: str | None = None) -> dict:
    started = time.perf_counter()
    if externals:  # labels only: a set of other classes fails in seconds, not after the search
        from cxr_tuner.search.evaluation.evaluate import check_external_labels

        check_external_labels(config, externals)
    best = run_search(config, log=log, budget=budget, **search_options)
    for line in best_lines(best, config):
        log(line)
    if retrain:
        # Imported here: a search-only run (or a chief) needs none of the later stages.
        from cxr_tuner.search.final.assemble import assemble
        from cxr_tuner.search.evaluation.evaluate import evaluate
        from cxr_tuner.search.delivery.export import export_model
        from cxr_tuner.search.final.retrain import retrain as retrain_winners

        saved = load_config(config.run_dir)  # with the class names the data stage found
        cut = budget.retrain_options(saved, best, log) if budget else {}
        retrain_winners(saved, augment=augment, log=log, **cut, **({"from_": retrain_from} if retrain_from else {}))
        if budget:
            budget.after_retrain(saved, log)
        if final[2] and budget:
            log("refit on train+val: skipped under --time-budget (its plan has no room for it)")
        assemble(saved, ensemble=final[0], point=final[1], refit=final[2] and not budget, log=log)
        evaluate(saved, log=log, externals=externals)
        export_model(saved, log=log)
        for line in console.summary_lines(config.layout, started) + timing.stage_lines(config.layout):
            log(line)
    if budget:
        budget.finish(config, log)
    return best


def _budget(config: RunConfig, retrain: bool, augment: bool, started: float | None, search_options: dict,
            retrain_from: str | None, externals=()):
    """The job's `search.tuning.budget.driver.Budget` with ``--time-budget``, refusing what it cannot plan (one line)."""
    if config.time_budget is None:
        return None
    from cxr_tuner.search.tuning.budget.driver import Budget, check_plannable

    check_plannable(config, retrain, augment, **search_options)
    return Budget(config.time_budget, started, retrain=retrain, from_=retrain_from or RETRAIN_FROM_DEFAULT,
                  externals=externals)


def best_lines(best: dict, config: RunConfig) -> list[str]:
    """What to print about the search's best trial and where to look further."""
    objective = (best.get("objective") or {}).get("name", "val_weighted_loss")
    top, trials = best.get("best") or {}, best.get("trials", "?")
    if top:
        score = number_text(top.get(objective), ".4f", "not recorded")
        lines = [f"best trial {top.get('trial_id', '?')} of {trials}: {objective} = {score}"]
    else:
        why = f"none of {trials} trial(s) completed" if isinstance(trials, int) else "no trial completed"
        lines = [f"best trial: {number_text(None, reason=why)}"]
    lines += [f"  {name} {value_text(value)}" for name, value in (top.get("hyperparameters") or {}).items()]
    # The data stage saved the class names (for the chance level) in config.json, not in this config.
    named = config if config.class_names or not config.layout.config.is_file() else load_config(config.run_dir)
    transfer = console.transfer_line(best, named)
    if transfer:
        lines.append(transfer)
    lines.append(f"inspect: tensorboard --logdir {config.layout.tensorboard}")
    return lines
