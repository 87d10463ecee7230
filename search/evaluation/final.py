"""Test figures of the final model beyond argmax: calibration, operating point, single best beside it.

Everything here applies what ``search.ensemble.assemble`` fixed on validation
(the temperature, the threshold); nothing is fitted on the test split.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cxr_tuner.search.engine.text import number_text
from cxr_tuner.search.evaluation import calibration, operating_point
from cxr_tuner.search.evaluation.metrics import classification_metrics
from cxr_tuner.search.engine.text import figure_text

_COMPARED = ("accuracy", "macro_f1", "covid_sensitivity", "covid_specificity")


def final_figures(record: dict, labels: np.ndarray, final_probs: np.ndarray, raw_probs: np.ndarray,
                  single_probs: np.ndarray, class_names, metrics: dict, out: Path,
                  groups=None) -> tuple[dict, dict]:
    """The ``calibration``, ``operating_point`` and ``single_vs_final`` sections of metrics.json, and pictures.

    Args:
        record: ``final.json`` (temperature, threshold, members).
        final_probs: The final model's test probabilities (calibrated).
        raw_probs: The same before the temperature (the members' average).
        single_probs: The rank-1 winner's own (uncalibrated) test probabilities.
        metrics: ``classification_metrics`` of ``final_probs``.
        groups: The test films' patient / near-duplicate groups (the bootstrap draws them).
    """
    check = record.get("calibration_check")  # None in records made before the check (which always applied T)
    applied = check is None or check["applied"]
    sections = {"calibration": {**calibration.summary(labels, raw_probs, record["temperature"]),
                                "fitted_on": "out-of-fold" if _on_folds(record) else "validation",
                                "applied": applied, "check": check,
                                "validation": record["calibration_validation"]}}
    single = classification_metrics(labels, calibration.scale(single_probs, record["single_temperature"]),
                                    class_names, groups=groups)
    sections["single_vs_final"] = {
        "final_kind": record["kind"], "members": record["members"],
        "single_best": {**{k: single[k] for k in _COMPARED}, "ece": single["ece"]["value"],
                        "temperature": record["single_temperature"]},
        "final": {**{k: metrics[k] for k in _COMPARED}, "ece": metrics["ece"]["value"]},
    }
    point = record.get("operating_point")
    if point:
        index = list(class_names).index(point["class"])
        sections["operating_point"] = {
            **{k: point[k] for k in ("class", "metric", "target", "threshold", "chosen_on", "how_to_apply")},
            "validation": point["validation"], "guarantee": point.get("guarantee"),
            **{k: point.get(k) for k in ("default", "others_called", "others_called_argmax", "max_others_called",
                                         "warning")},
            "test": operating_point.figures(labels, final_probs, index, point["threshold"]),
            "test_argmax": _argmax_figures(labels, final_probs, index),
        }
    if record.get("operating_point_refused"):
        sections["operating_point_refused"] = record["operating_point_refused"]
    picture = calibration.plot_reliability(labels, raw_probs, final_probs if applied else None,
                                           out / "reliability.png")
    fitted = "out-of-fold predictions" if _on_folds(record) else "validation"
    caption = f"temperature fitted on {fitted}" if applied else "no temperature applied"
    return sections, {f"Reliability diagram (test split; {caption})": picture}


def _on_folds(record: dict) -> bool:
    """Whether the final model's temperature and threshold were fitted on out-of-fold predictions (``--folds``)."""
    return str(record.get("fitted_on", "")).startswith("out-of-fold")


def _argmax_figures(labels, probs, index) -> dict:
    # A one-hot of the argmax at threshold 0.5 decides as argmax does: the same bootstrap, argmax's figures.
    called = probs.argmax(axis=1)
    fake = np.zeros_like(probs)
    fake[np.arange(len(called)), called] = 1.0
    return operating_point.figures(labels, fake, index, 0.5)


def section_markdown(sections: dict) -> str:
    """The report.md section for these figures."""
    cal = sections["calibration"]
    fitted = "out-of-fold predictions of train+val" if cal["fitted_on"] == "out-of-fold" else "validation"
    decided = f"Temperature {cal['check']['text']}" if cal.get("check") else \
        f"Temperature {number_text(cal.get('temperature'))}, fitted on {fitted}"
    ece, nll = ({when: number_text(cal.get(f"{name}_{when}"), ".4f") for when in ("before", "after")}
                for name in ("ece", "nll"))
    if cal.get("applied", True):
        lines = [f"{decided}. Test ECE {ece['before']} before, {ece['after']} after; test "
                 f"cross-entropy {nll['before']} -> {nll['after']}."]
    else:
        lines = [f"{decided}. Test ECE {ece['before']}; test cross-entropy {nll['before']}."]
    compare = sections["single_vs_final"]
    lines += ["", f"| | single best | final ({compare['final_kind']}: {', '.join(compare['members'])}) |",
              "|---|---|---|"]
    for name in _COMPARED:
        lines.append(f"| {name} | {figure_text(compare['single_best'].get(name))} "
                     f"| {figure_text(compare['final'].get(name))} |")
    lines.append(f"| ECE (calibrated) | {number_text(compare['single_best'].get('ece'), '.4f')} "
                 f"| {number_text(compare['final'].get('ece'), '.4f')} |")
    point = sections.get("operating_point")
    if point:
        sure = f" Chosen to be {operating_point.guarantee_text(point)}." if point.get("guarantee") else ""
        cost = f" Cost: {operating_point.cost_text(point)}." if point.get("others_called") is not None else ""
        warning = f" **Warning:** {point['warning']}." if point.get("warning") else ""
        lines += ["", f"Operating point {point['class']} {point['metric']} >= {point['target']:g}: "
                  f"threshold {number_text(point.get('threshold'), '.4f')} ({point['how_to_apply']}).{sure}{cost}"
                  f"{warning}", "", "| on the test split | sensitivity | specificity |", "|---|---|---|"]
        for label, figures in (("argmax", point["test_argmax"]), ("operating point", point["test"])):
            lines.append(f"| {label} | {figure_text(figures.get('sensitivity'))} "
                         f"| {figure_text(figures.get('specificity'))} |")
    refused = sections.get("operating_point_refused")
    if refused:
        text = operating_point.refused_text(refused)
        lines += ["", text[0].upper() + text[1:] + "."]
    return "\n".join(lines)
