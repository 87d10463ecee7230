"""Single-label figures and their markdown: the report's tables, the final model's and the shortcut checks' sections.

Pure: labels, probabilities and records in, dicts and text out. The evaluate stage
computes with them and the report writes what they return.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cxr_tuner.search.figures import calibration, operating_point
from cxr_tuner.search.figures.metrics import classification_metrics
from cxr_tuner.search.figures.text import figure_text, number_text

COMPARED = ("accuracy", "macro_f1", "covid_sensitivity", "covid_specificity")
ABOVE_CHANCE = 0.10  # chest-hidden accuracy this far above chance (CI's lower end) is a warning
EXTERNAL_DROP = 0.05  # macro-F1 this much lower on an external set is a warning


def final_figures(record: dict, labels: np.ndarray, final_probs: np.ndarray, raw_probs: np.ndarray,
                  single_probs: np.ndarray, class_names, metrics: dict, groups=None) -> tuple[dict, dict]:
    """The ``calibration``, ``operating_point`` and ``single_vs_final`` sections of metrics.json, and the
    reliability diagram's data: ``{caption: {"kind": "reliability", "labels", "before", "after"}}``.

    Args:
        record: ``final.json`` (temperature, threshold, members).
        final_probs: The final model's test probabilities (calibrated).
        raw_probs: The same before the temperature (the members' average).
        single_probs: The rank-1 winner's own (uncalibrated) test probabilities.
        metrics: ``classification_metrics`` of ``final_probs``.
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
        "single_best": {**{k: single[k] for k in COMPARED}, "ece": single["ece"]["value"],
                        "temperature": record["single_temperature"]},
        "final": {**{k: metrics[k] for k in COMPARED}, "ece": metrics["ece"]["value"]},
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
    fitted = "out-of-fold predictions" if _on_folds(record) else "validation"
    caption = f"temperature fitted on {fitted}" if applied else "no temperature applied"
    picture = {"kind": "reliability", "file": "reliability.png", "labels": labels, "before": raw_probs,
               "after": final_probs if applied else None}
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


def final_markdown(sections: dict) -> str:
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
    for name in COMPARED:
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


HOW_TO_READ = (
    "How to read this: the 95% CI is the range the figure would plausibly take on another "
    "test set like this one (2.5th-97.5th percentile over {n_bootstrap} bootstrap resamples "
    "of the test cases); a wide interval means the test set is too small to tell models "
    "apart. ECE (expected calibration error, {n_bins} equal-width bins of the top "
    "probability) is the average gap between how sure the model says it is and how often "
    "it is right: 0 is perfectly calibrated, 0.10 means 10 points off on average."
)


def headline_table(metrics):
    positive = metrics.get("positive_class", "COVID")
    rows = [
        ("Accuracy", metrics["accuracy"]),
        ("Macro F1", metrics["macro_f1"]),
        ("Macro ROC AUC (one-vs-rest)", metrics["roc_auc"]["macro"]),
        (f"{positive} sensitivity (vs all other classes)", metrics["covid_sensitivity"]),
        (f"{positive} specificity (vs all other classes)", metrics["covid_specificity"]),
        ("Expected calibration error", {"value": metrics["ece"]["value"], "ci95": None}),
    ]
    lines = ["| Figure | Value | 95% CI |", "|---|---|---|"]
    for label, figure in rows:
        value = _number(figure.get("value"), figure.get("reason", "undefined"))
        ci = figure.get("ci95") if figure.get("value") is not None else None
        lines.append(f"| {label} | {value} | {f'[{_number(ci[0])}, {_number(ci[1])}]' if ci else ''} |")
    return "\n".join(lines)


def per_class_table(metrics):
    aucs = metrics["roc_auc"]["per_class"]
    lines = [
        "| Class | Support | Precision | Recall | F1 | ROC AUC | TP | FP | TN | FN |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in metrics["per_class"].items():
        auc = _number(aucs.get(name), metrics["roc_auc"].get("undefined", {}).get(name, "undefined"))
        lines.append(
            f"| {name} | {row['support']} | {_number(row['precision'])} | {_number(row['recall'])} "
            f"| {_number(row['f1'])} | {auc} | {row['tp']} | {row['fp']} | {row['tn']} | {row['fn']} |"
        )
    return "\n".join(lines)


def _number(value, reason: str = "undefined"):
    return number_text(value, ".3f", reason)


def per_source(labels, probs, sources, class_names, groups=None) -> dict:
    """Accuracy, macro-F1 and COVID sensitivity (with CIs over ``groups``) per source; {} without sources."""
    sources = np.asarray(sources)
    groups = None if groups is None else np.asarray(groups, dtype=object)
    if not sources.size or not any(sources):
        return {}
    figures = {}
    for name in sorted(set(sources.tolist())):
        rows = sources == name
        metrics = classification_metrics(np.asarray(labels)[rows], probs[rows], class_names,
                                         groups=None if groups is None else groups[rows])
        figures[name or "(none)"] = {"n": metrics["n"], "accuracy": metrics["accuracy"],
                                     "macro_f1": metrics["macro_f1"],
                                     "covid_sensitivity": metrics["covid_sensitivity"]}
    return figures


def _energy_sentence(energy: dict) -> str:
    overall = energy["all"]
    if overall.get("mean") is None:
        return f"Grad-CAM energy inside the chest box: {_share(overall)}."
    per_class = ", ".join(f"{name} {_share(row, '.2f')}" for name, row in energy["per_class"].items())
    return (f"Grad-CAM energy inside the chest box: {_share(overall, '.2f')} on average (per class: {per_class}; "
            f"a heatmap spread evenly would give {number_text(energy.get('uniform_reference'), '.2f')}).")


def _share(row: dict, spec: str = ".3f") -> str:
    return number_text(row.get("mean"), spec, row.get("reason", "not measured"))


def _figures_table(sets) -> str:
    lines = ["| Set | n | Accuracy [95% CI] | Macro F1 [95% CI] | COVID sensitivity | COVID specificity |",
             "|---|---|---|---|---|---|"]
    for name, metrics in sets:
        cells = " | ".join(figure_text(metrics.get(key)) for key in
                           ("accuracy", "macro_f1", "covid_sensitivity", "covid_specificity"))
        lines.append(f"| {name} | {metrics['n']} | {cells} |")
    return "\n".join(lines)


def _probe_table(probe, box: dict | None) -> str:
    rows = [("Model, chest hidden", "winner_chest_hidden"), ("Model, only the chest kept", "winner_chest_only"),
            ("Fresh head on chest-hidden features", "fresh_head_chest_hidden")]
    lines = ["| Chest-hidden probe (test split) | Accuracy [95% CI] | Chance |", "|---|---|---|"]
    lines += [f"| {label} | {figure_text(probe[key].get('accuracy'))} | {number_text(probe[key].get('chance'))} |"
              for label, key in rows]
    box = box or probe["chest_box"]  # shortcuts.json files of earlier versions kept it in the probe
    lines.append(f"\nChest box: rows {box['top']:.0%}-{box['bottom']:.0%}, columns {box['left']:.0%}-"
                 f"{box['right']:.0%} of the image, hidden by the mean of the rest.")
    return "\n".join(lines)


def _warnings(sets, probe, energy, source_warnings) -> list[str]:
    found = [w.removeprefix("WARNING: ") for w in source_warnings]
    if probe:
        head = probe["fresh_head_chest_hidden"]
        low = (head["accuracy"].get("ci95") or [head["accuracy"].get("value")])[0]
        if low is not None and low - head["chance"] >= ABOVE_CHANCE:
            found.append(f"with the lungs hidden, a fresh head still scores accuracy "
                         f"{number_text(head['accuracy']['value'])} (chance {number_text(head['chance'])}): "
                         "the images carry their label outside the chest, so "
                         "part of the test score can come from markers, borders or the source's look.")
    if energy and energy["all"]["mean"] is not None and energy["all"]["mean"] < energy["uniform_reference"]:
        found.append(f"the model's Grad-CAM energy inside the chest ({energy['all']['mean']:.2f}) is below "
                     f"what an even spread gives ({energy['uniform_reference']:.2f}): it looks outside the lungs.")
    test_f1 = sets[0][1]["macro_f1"]["value"]
    for name, metrics in sets[1:]:
        f1 = metrics["macro_f1"]["value"]
        if test_f1 is not None and f1 is not None and test_f1 - f1 >= EXTERNAL_DROP:
            found.append(f"macro-F1 drops from {test_f1:.3f} on the test split to {f1:.3f} on {name}: "
                         "the test figures overstate what to expect on other sources.")
    return found


def checks_markdown(record: dict, out) -> str:
    """The report's "Shortcut checks" section: per-source figures, Grad-CAM energy per class, gallery."""
    parts = []
    if record.get("per_source"):
        lines = ["Per source:", "", "| Source | n | Accuracy [95% CI] | Macro F1 [95% CI] | COVID sensitivity |",
                 "|---|---|---|---|---|"]
        lines += [f"| {name} | {row['n']} | {figure_text(row['accuracy'])} | {figure_text(row['macro_f1'])} "
                  f"| {figure_text(row['covid_sensitivity'])} |" for name, row in record["per_source"].items()]
        parts.append("\n".join(lines))
    else:
        parts.append("No source column in the manifest: no per-source figures.")
    energy = record.get("energy")
    if energy:
        lines = ["Share of Grad-CAM energy (predicted class) inside the chest box, by true class:", "",
                 "| Class | n | Mean | SD | Median [IQR] |", "|---|---|---|---|---|"]
        for name, row in energy["per_class"].items():
            if row.get("mean") is None:
                lines.append(f"| {name} | {row.get('n', 0)} | {_share(row)} | | |")
            else:
                lines.append(f"| {name} | {row['n']} | {row['mean']:.3f} | {row['std']:.3f} "
                             f"| {row['median']:.3f} [{row['q1']:.3f}, {row['q3']:.3f}] |")
        parts.append("\n".join(lines))
    if record.get("least_inside_gallery") not in (None, "None"):
        link = Path(record["least_inside_gallery"]).relative_to(Path(out)).as_posix()
        parts.append(f"[Test images with the least energy inside the chest box]({link})")
    return "\n\n".join(parts)


def result_line(metrics: dict, out: Path) -> str:
    """The line evaluate ends with: headline figures and where the report is (``n/a (why)`` for a missing figure)."""
    return (f"accuracy {figure_text(metrics.get('accuracy'))}, macro F1 {figure_text(metrics.get('macro_f1'))} "
            f"on {number_text(metrics.get('n'), 'd', 'count not recorded')} images; "
            f"report: {Path(out) / 'report.html'} (and report.md)")


def probe_line(record: dict) -> str:
    """The shortcut checks' line: the chest-hidden probe's fresh head and the Grad-CAM energy in the chest."""
    head = (record.get("probe") or {}).get("fresh_head_chest_hidden") or {}
    energy = (record.get("energy") or {}).get("all") or {}
    return (f"chest-hidden probe: fresh head accuracy {figure_text(head.get('accuracy'))} (chance "
            f"{number_text(head.get('chance'))}); Grad-CAM energy in the chest "
            f"{number_text(energy.get('mean'), reason=energy.get('reason', 'not measured'))}")


def probe_scores(labels, probs, class_names, seed, groups=None) -> dict:
    """Accuracy and macro-F1 with CIs beside chance (always the most common class of the scored set)."""
    metrics = classification_metrics(labels, probs, class_names, seed=seed, groups=groups)
    chance = float(np.bincount(labels, minlength=len(class_names)).max() / len(labels))
    return {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"], "chance": chance,
            "n": metrics["n"]}


def report_parts(metrics: dict) -> list[str]:
    """report.md's opening parts: the headline figures with CIs and the per-class table."""
    return [
        f"{metrics['n']} test cases; classes: {', '.join(metrics['class_names'])}.",
        "## Headline figures",
        headline_table(metrics),
        HOW_TO_READ.format(n_bootstrap=metrics.get("n_bootstrap", "?"), n_bins=metrics["ece"]["n_bins"]),
        "## Per class (one class against the rest)",
        per_class_table(metrics),
        "TP: cases of the class called that class; FP: other cases called that class; "
        "TN: other cases called something else; FN: cases of the class called something else.",
    ]


def verdict_markdown(sets: list[tuple[str, dict]], checks: dict) -> str:
    """The verdict: the test split beside each external set, the probe, the energy, and what they warn of.

    Args:
        sets: ``(name, metrics)`` pairs, the test split first.
        checks: The test split's ``shortcuts.json`` (probe, energy, source warnings).
    """
    lines = ["## Verdict", _figures_table(sets)]
    probe = checks.get("probe")
    if probe:
        lines += ["", _probe_table(probe, checks.get("chest_box"))]
    energy = checks.get("energy")
    if energy:
        lines += ["", _energy_sentence(energy)]
    warnings = _warnings(sets, probe, energy, checks.get("source_warnings", []))
    lines += [""] + ([f"- **Warning:** {w}" for w in warnings] if warnings else
                     ["No sign of shortcuts in these figures (which cannot rule them out)."])
    return "\n".join(lines)


def energy_summary(shares: np.ndarray, labels, class_names, uniform: float) -> dict:
    """Mean, standard deviation and quartiles of the chest share per true class and overall."""
    def stats(values):
        if not len(values):
            return {"n": 0, "mean": None, "reason": "no images"}
        values = values[np.isfinite(values)]
        if not len(values):  # the model's gradients at the Grad-CAM layer were zero for every image
            return {"n": 0, "mean": None, "reason": "every Grad-CAM heatmap is all zero"}
        q1, median, q3 = np.percentile(values, [25, 50, 75])
        return {"n": int(len(values)), "mean": float(values.mean()), "std": float(values.std()),
                "q1": float(q1), "median": float(median), "q3": float(q3)}

    labels = np.asarray(labels)
    per_class = {name: stats(shares[labels == i]) for i, name in enumerate(class_names)}
    return {"per_class": per_class, "all": stats(shares), "uniform_reference": uniform}
