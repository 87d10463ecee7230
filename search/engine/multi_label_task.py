"""Multi-label findings: one sigmoid per finding, per-finding weighted BCE, temperatures and thresholds."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np

from cxr_tuner.data import labels as label_files, sources, split, synthetic
from cxr_tuner.data.errors import UserError
from cxr_tuner.data.split import SPLITS
from cxr_tuner.hypermodels.classifier import OBJECTIVE_MULTILABEL
from cxr_tuner.hypermodels.findings import Findings, auc_metric_name, balanced_weights, weighted_bce
from cxr_tuner.search.engine.task_base import Calibrated, Task
from cxr_tuner.search.figures import findings as figures
from cxr_tuner.search.figures.text import figure_text, number_text


class MultiLabel(Task):
    """Each film has any number of findings (1 / 0 / masked); the model answers a sigmoid per finding."""

    name = "multilabel"
    objective = OBJECTIVE_MULTILABEL
    unit = "finding"

    def demo_root(self, layout) -> Path:
        return synthetic.write_multilabel_demo(layout.demo_data) / synthetic.MULTILABEL_CSV

    def check_decoded(self, examples, decoded, skipped_csv: Path) -> None:
        """Nothing to check here: a finding left without positives is dropped by the split, one line each."""

    def ignored_columns(self, root: Path) -> list[str]:
        return []

    def split(self, config, examples, groups, table) -> tuple[np.ndarray, dict]:
        """Iterative stratification over every finding; a finding with too few positive groups is dropped."""
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

    def calibrate(self, y, raw, first, names, points, seed: int, basis: str) -> Calibrated:
        """Per finding none / shared / own temperature, then each finding's threshold on the calibrated output."""
        # Judged by held-out cross-entropy: measured as low a test ECE as judging by ECE, or lower (docs/multilabel.md).
        decision = figures.choose_temperatures(y, raw, seed=seed, names=names, criterion="nll")
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

    def output_meaning(self) -> str:
        return "sigmoid probability of each finding, in class_names order (several may be present)"

    def headline_metrics(self, metrics: dict) -> dict:
        return {"n": metrics["n"], "macro_roc_auc": metrics["macro_auc"], "micro_roc_auc": metrics["micro_auc"],
                "per_finding_roc_auc": {name: row["roc_auc"] for name, row in metrics["per_label"].items()},
                "ci_method": metrics.get("ci_method")}

    def headline_lines(self, metrics: dict) -> list[str]:
        """Per finding: its AUC."""
        lines = [f"  test split, {number_text(metrics.get('n'), 'd', 'count not recorded')} films (95% bootstrap "
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
