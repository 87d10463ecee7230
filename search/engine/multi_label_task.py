"""Multi-label findings: one sigmoid per finding, per-finding weighted BCE, temperatures and thresholds."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np

from cxr_tuner.data import audit, cache, labels as label_files, sources, split, synthetic_findings
from cxr_tuner.data.errors import UserError
from cxr_tuner.data.split import SPLITS
from cxr_tuner.hypermodels.classifier import OBJECTIVE_MULTILABEL
from cxr_tuner.hypermodels.findings import Findings, auc_metric_name, balanced_weights, weighted_bce
from cxr_tuner.search.engine.task_base import Calibrated, Films, Page, Task
from cxr_tuner.search.figures import finding_report, findings as figures
from cxr_tuner.search.figures.text import figure_text, number_text

NO_THRESHOLD_RULE = "0.5: no final model was assembled, so no threshold was chosen on validation"


class MultiLabel(Task):
    """Each film has any number of findings (1 / 0 / masked); the model answers a sigmoid per finding."""

    name = "multilabel"
    objective = OBJECTIVE_MULTILABEL
    stress_names = ("macro ROC AUC", "ROC AUC of the worst finding")

    def demo_root(self, layout) -> Path:
        return synthetic_findings.write_multilabel_demo(layout.demo_data) / synthetic_findings.MULTILABEL_CSV

    def check_decoded(self, examples, decoded, skipped_csv: Path) -> None:
        """Nothing to check here: a finding left without positives is dropped by the split, one line each."""

    def ignored_columns(self, root: Path) -> list[str]:
        return []

    def split(self, config, examples, groups, table) -> tuple[np.ndarray, dict]:
        """Iterative stratification over every finding; a finding with too few positive groups is dropped."""
        if config.val_sources == "apart":
            raise UserError("--val-sources apart keeps a class's sources apart; findings runs split by patient "
                            "only. Drop --val-sources.")
        targets = label_files.multi_hot([e.label for e in examples], table.names)
        splits, kept, dropped = split.split_multilabel(targets, groups, table.names, config.fractions, config.seed,
                                                       config.min_positive_groups)
        kept_targets = label_files.multi_hot([e.label for e in examples], kept)
        return splits, {"kept": list(kept), "dropped": list(dropped),
                        "positives": split.positives_per_split(kept_targets, splits, kept),
                        "positive_groups": split.positive_groups_per_split(kept_targets, groups, splits, kept)}

    def source_audit(self, examples, ignored: list[str], label_record: dict) -> dict:
        """Per finding: does the source (a site column, or the view for NIH and CheXpert) tell whether it is present?"""
        names = label_record["kept"]
        targets = label_files.multi_hot([e.label for e in examples], names)
        audits, lines = {}, []
        for i, name in enumerate(names):
            known = targets[:, i] != label_files.MASKED
            per_finding = [dataclasses.replace(e, label=name if targets[j, i] == 1 else f"no {name}")
                           for j, e in enumerate(examples) if known[j]]
            found = sources.source_audit(per_finding)
            audits[name] = found.to_dict() if found else None
            if found is not None:
                v = "n/a" if found.cramers_v is None else f"{found.cramers_v:.3f}"
                lines.append(f"source audit, {name}: Cramér's V {v}; presence from the source alone: accuracy "
                             f"{found.source_accuracy:.3f} (chance {found.chance:.3f})")
                lines += [f"{name}: {warning}" for warning in found.warnings]
        if all(audit is None for audit in audits.values()):
            lines = sources.summary_lines(None)
        return {"ignored_columns": ignored, "audit": None, "per_finding": audits, "lines": lines}

    def encode(self, config, examples, splits: np.ndarray, label_record: dict):
        """Multi-hot rows over the kept findings, weights balanced per finding on train."""
        names = tuple(label_record.get("kept") or ())
        if config.class_names and names != tuple(config.class_names):
            raise UserError(f"{config.layout.findings} no longer matches {config.layout.config} (findings "
                            f"{', '.join(names)} against {', '.join(config.class_names)}); start over with "
                            f"`cxr-tuner search --run-dir {config.run_dir} --overwrite` and the run's flags.")
        labels = label_files.multi_hot([e.label for e in examples], names)
        weights = balanced_weights(labels[np.asarray(splits) == "train"], names)
        return config.replace(task=self.name, class_names=names, class_weights=weights), labels

    def sample_weights(self, config, labels: np.ndarray) -> np.ndarray:
        """Ones: the loss weighs each (film, finding) entry itself."""
        return np.ones(len(labels), "float32")

    def objective_value(self, config, labels, probs, weights) -> float:
        return weighted_bce(labels, probs, self.findings(config))

    def fold_split(self, config, labels, groups):
        return split.fold_split_multilabel(labels, groups, config.folds, config.seed, names=config.class_names)

    def data_lines(self, data) -> list[str]:
        """Each finding's positives per split (films, and patient groups), its loss weights; the dropped ones."""
        labels = data.findings.labels
        lines = list(labels.get("dropped", []))
        for i, name in enumerate(data.config.class_names):
            films, groups = labels["positives"][name], labels["positive_groups"][name]
            masked = int((data.labels[:, i] == -1).sum())
            weight = data.config.class_weights[name]
            lines.append(f"finding {i} = {name}: positives "
                         + " / ".join(f"{s} {films[s]} ({groups[s]} groups)" for s in SPLITS)
                         + (f", {masked} masked" if masked else "")
                         + f"; weights positive {weight['positive']:.3f}, negative {weight['negative']:.3f}")
        return lines

    def findings(self, config):
        return Findings.from_weights(config.class_names, config.class_weights)

    def run_metrics(self, config) -> dict[str, str]:
        """The weighted bce, the per-entry accuracy at 0.5, then each finding's validation AUC."""
        return {self.objective: "class-weighted validation binary cross-entropy",
                "val_accuracy": "validation accuracy (each finding at 0.5)",
                **{f"val_{auc_metric_name(n)}": f"validation AUC of {n}" for n in config.class_names}}

    def chance_text(self, config) -> str:
        """Balanced weights: every finding answered 0.5 scores ln 2."""
        return f"; chance ln 2 = {math.log(2):.4f}"

    def parse_points(self, text: str | None, names):
        """Several ``LABEL:sensitivity=X``, comma-separated; None: each finding's default rule."""
        texts = None if text is None else [part for part in text.split(",") if part.strip()]
        return figures.parse_points(texts, names)

    def calibrate(self, y, raw, first, names, points, seed: int, basis: str, groups=None) -> Calibrated:
        """Per finding none / shared / own temperature, then each finding's threshold on the calibrated output."""
        # Judged by held-out cross-entropy: measured as low a test ECE as judging by ECE, or lower (docs/multilabel.md).
        decision = figures.choose_temperatures(y, raw, seed=seed, names=names, criterion="nll", groups=groups)
        temperatures = [float(t) for t in decision["temperatures"]]
        calibrated = figures.scale(raw, np.asarray(temperatures))  # what the model's FindingTemperature computes
        chosen = figures.choose_thresholds(y, calibrated, names, points)
        record = {"task": self.name, "temperature": temperatures, "calibration_check": _jsonable(decision),
                  "operating_point": None, "operating_points": _jsonable(chosen), "operating_point_refused": None}
        lines = [decision["text"]]
        for name, point in chosen.items():
            seen = point.get("validation") or {}
            lines.append(f"operating point {name}: threshold {point['threshold']:.4f} ({point['rule_text']}; {basis} "
                         f"sensitivity {number_text(seen.get('sensitivity'))}, "
                         f"specificity {number_text(seen.get('specificity'))})")
        return Calibrated(temperatures, record, lines)

    def final_card(self, record: dict) -> dict:
        """The final model's temperatures and each finding's threshold."""
        k = record["ensemble_size"]
        what = (f"the mean of the sigmoid outputs of the top {k} retrained winners ({', '.join(record['members'])})"
                if k > 1 else f"the rank-1 retrained winner ({record['members'][0]})")
        what += ", " + record["calibration_check"]["text"]
        model = {"kind": record["kind"], "members": record["members"], "temperature": record["temperature"],
                 "what": what}
        if k > 1:
            model["gradcam"] = "explain with a member: RUN_DIR/winners/" + record["members"][0] + "/model.keras"
        thresholds = {name: point["threshold"] for name, point in record["operating_points"].items()}
        return {"model": model, "operating_point": None, "operating_points": record["operating_points"],
                "thresholds": thresholds}

    def check_external(self, config, data: str, names):
        """The set's label table, refused when it holds classes or labels none of the run's findings."""
        table = label_files.read(data, "auto", config.uncertain, config.views or None)
        if table.task != self.name:
            raise UserError(f"{data} holds one class per film; this run's model answers findings "
                            f"({', '.join(names)}): pass a label file of findings.")
        if not any(n in table.names for n in names):
            raise UserError(f"{data} labels none of the model's findings ({', '.join(names)}; it has "
                            f"{', '.join(table.names)}); pass a label file with the same finding names.")
        return table

    def external_films(self, config, data: str, log) -> Films:
        """An external label file read as the run's findings; a finding it does not label is masked there."""
        table = self.check_external(config, data, config.class_names)
        missing = [n for n in config.class_names if n not in table.names]
        if missing:
            log(f"external set: {', '.join(missing)} not labelled there, left out of its figures")
        decoded = cache.load_decoded(table.examples, config.image_size, config.layout.external_cache, progress=False)
        for skipped in decoded.skipped:
            log(f"skipped {skipped.path}: {skipped.reason}")
        targets = label_files.multi_hot([e.label for e in decoded.examples], config.class_names)
        for name in missing:
            targets[:, list(config.class_names).index(name)] = label_files.MASKED
        return Films(decoded.images, targets, [e.path for e in decoded.examples],
                     [e.source for e in decoded.examples], audit.leak_groups(decoded.examples, decoded.images))

    def test_metrics(self, films: Films, probs, names, record, seed: int) -> dict:
        """Per finding AUC, AP and the figures at its threshold (chosen on validation; 0.5 before a final model)."""
        names = list(names)
        points = record["operating_points"] if record else {
            name: {"threshold": 0.5, "rule": "fallback", "rule_text": NO_THRESHOLD_RULE} for name in names}
        thresholds = {name: float(points[name]["threshold"]) for name in names}
        metrics = figures.label_metrics(films.labels, probs, names, thresholds, groups=films.groups, seed=seed)
        metrics.update(task=self.name, n=int(len(films.labels)), class_names=names, thresholds=thresholds,
                       operating_points=points)
        return metrics

    def stress_figures(self, films: Films, probs, names, metrics, seed: int) -> dict:
        """Macro ROC AUC with its CI, and the lowest AUC of a finding the set labels both ways."""
        found = figures.label_metrics(films.labels, probs, list(names), metrics["thresholds"], groups=films.groups,
                                      seed=seed)
        aucs = {name: row["roc_auc"]["value"] for name, row in found["per_label"].items()
                if row["roc_auc"]["value"] is not None}
        worst = min(aucs, key=aucs.get) if aucs else None
        return {"headline": found["macro_auc"], "worst": {"of": worst, "value": aucs.get(worst)}}

    def final_figures(self, record, films: Films, probs, raw, single, names, metrics):
        """The members' plain average and the rank-1 winner alone, beside the final model."""
        found = {key: figures.label_metrics(films.labels, np.asarray(values, np.float64), list(names),
                                            metrics["thresholds"], groups=films.groups, n_bootstrap=0).get("macro_auc")
                 for key, values in (("uncalibrated_macro_auc", raw), ("single_best_macro_auc", single))}
        return found, {"Final model": finding_report.final_markdown(record, {**metrics, **found})}, {}

    def prediction_table(self, films: Films, probs, names, metrics) -> tuple[list, list]:
        thresholds = metrics["thresholds"]

        def text(row):
            return "|".join(n for n, v in zip(names, row) if v == 1)

        called = np.column_stack([probs[:, i] >= thresholds[n] for i, n in enumerate(names)])
        rows = [[file, text(t), text(c.astype(float)), *(f"{p:.6f}" for p in row)]
                for file, t, c, row in zip(films.paths, films.labels, called, probs)]
        return ["path", "true", "called", *(f"p_{n}" for n in names)], rows

    def pictures(self, films: Films, probs, names, metrics) -> dict:
        return {"ROC curves per finding": {"kind": "finding_roc", "file": "roc.png", "targets": films.labels,
                                           "probs": probs, "names": list(names)}}

    def gallery_pages(self, films: Films, probs, names, metrics, per_page: int = 12) -> list[Page]:
        """Per finding, a page of films called positive that have it and one of its misses and false alarms;
        each heatmap is the map of that finding's logit, most confident first; masked films are left out."""
        thresholds, pages = metrics["thresholds"], []
        for index, name in enumerate(names):
            called = probs[:, index] >= thresholds[name]
            present, absent = films.labels[:, index] == 1, films.labels[:, index] == 0
            wrong = (present & ~called) | (absent & called)
            for kind, chosen, order, file in (
                    ("found", present & called, -probs[:, index], "found"),
                    ("missed or false alarm", wrong, -np.abs(probs[:, index] - thresholds[name]), "errors")):
                rows = np.flatnonzero(chosen)
                rows = rows[np.argsort(order[rows], kind="stable")][:per_page]
                if len(rows):
                    pages.append(Page(f"{name} {kind}", f"{name}-{file}.png", f"{name}: {kind} ({len(rows)} shown)",
                                      rows, np.full(len(rows), index),
                                      [f"{'has' if present[r] else 'no'} {name}\np {probs[r, index]:.2f} "
                                       f"(threshold {thresholds[name]:.2f})" for r in rows]))
        return pages

    def energy_outputs(self, probs):
        """None: a film's findings have no one output to measure, so findings have no chest-energy check."""
        return None

    def energy_figures(self, shares, films: Films, probs, names, uniform: float):
        raise NotImplementedError("findings have no chest-energy check (energy_outputs is None)")

    def probe_rows(self, labels, seed: int, most: int):
        rows = np.arange(len(labels))
        if len(rows) <= most:
            return rows
        return np.sort(np.random.default_rng(seed).choice(rows, most, replace=False))

    def probe_figures(self, films: Films, hidden, only, features, train_features, train_labels, names, seed: int):
        return finding_report.probe_figures(films.labels, hidden, only, features, train_features, train_labels,
                                            names)

    def per_source(self, films: Films, probs, names) -> dict:
        return finding_report.per_source(films.labels, probs, films.sources, names)

    def report_parts(self, metrics: dict) -> list[str]:
        return finding_report.report_parts(metrics)

    def report_sections(self, checks: dict, out: Path, labels: dict, config) -> dict[str, str]:
        return {"Shortcut checks per finding": finding_report.checks_markdown(checks),
                "Labels": finding_report.labels_markdown(labels, config.uncertain, config.min_positive_groups)}

    def verdict(self, sets, checks) -> str:
        """"": the verdict's figures (accuracy, macro-F1, COVID sensitivity) are single-label ones."""
        return ""

    def comparison_cells(self, metrics: dict) -> dict[str, str]:
        return {"Macro ROC AUC [95% CI]": figure_text(metrics.get("macro_auc")),
                "Micro ROC AUC [95% CI]": figure_text(metrics.get("micro_auc"))}

    def report_title(self, winner: str) -> str:
        return f"Evaluation of {winner} (findings)"

    def gallery_text(self) -> tuple[str, str]:
        return ("Grad-CAM galleries per finding",
                "Each heatmap is the map of that finding's logit: where the model looked for that finding.")

    def opening_line(self, winner: str, films: Films, external: bool, names) -> str:
        return (f"evaluate: {winner} on {len(films.images)} {'external' if external else 'test'} films, "
                f"{len(names)} findings")

    def closing_lines(self, metrics: dict, checks: dict, out: Path) -> list[str]:
        probe = [finding_report.probe_line(checks["probe"])] if checks.get("probe") else []
        return probe + [finding_report.result_line(metrics, out)]

    def decision_rule(self, record: dict | None):
        """Each finding's threshold chosen on validation (a card's ``thresholds``, final.json's operating points),
        or None (0.5 each)."""
        record = record or {}
        if "thresholds" in record:
            return record["thresholds"]
        points = record.get("operating_points")
        return {name: point["threshold"] for name, point in points.items()} if points else None

    def decide(self, row, names, rule) -> dict:
        """Findings are answered one by one: each its probability, threshold and call."""
        cut = rule or {name: 0.5 for name in names}
        findings = {name: {"probability": float(p), "threshold": float(cut[name]), "called": bool(p >= cut[name])}
                    for name, p in zip(names, row)}
        return {"decision": [name for name in names if findings[name]["called"]], "findings": findings,
                "decided_by": "each finding's threshold, chosen on validation" if rule else
                "0.5 per finding (no thresholds were chosen)"}

    def output_meaning(self) -> str:
        return "sigmoid probability of each finding, in class_names order (several may be present)"

    def headline_metrics(self, metrics: dict) -> dict:
        return {"n": metrics["n"], "macro_roc_auc": metrics["macro_auc"], "micro_roc_auc": metrics["micro_auc"],
                "per_finding_roc_auc": {name: row["roc_auc"] for name, row in metrics["per_label"].items()},
                "ci_method": metrics.get("ci_method")}

    def headline_lines(self, metrics: dict, title: str = "test split") -> list[str]:
        """Per finding: its AUC."""
        lines = [f"  {title}, {number_text(metrics.get('n'), 'd', 'count not recorded')} films (95% bootstrap "
                 "CI over patients):", f"    {'macro ROC AUC':<20} {figure_text(metrics.get('macro_auc'))}",
                 f"    {'micro ROC AUC':<20} {figure_text(metrics.get('micro_auc'))}"]
        return lines + [f"    {name + ' AUC':<20} {figure_text(row.get('roc_auc'))}"
                        for name, row in (metrics.get("per_label") or {}).items()]


def _jsonable(value):
    """NumPy scalars and arrays inside ``value`` as plain JSON values."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    return value
