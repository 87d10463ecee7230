"""Single-label classes: one softmax over the classes, class-weighted cross-entropy, one operating point."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from cxr_tuner.data import manifest, sources, split, synthetic
from cxr_tuner.data.class_weights import class_weights
from cxr_tuner.data.errors import UserError
from cxr_tuner.data.split import SPLITS
from cxr_tuner.hypermodels.classifier import OBJECTIVE, weighted_loss
from cxr_tuner.search.engine.task_base import FITTED_ON_FOLDS, Calibrated, Task
from cxr_tuner.search.figures import calibration, operating_point
from cxr_tuner.search.figures.text import figure_text, number_text

_CARD_HEADLINE = ("accuracy", "macro_f1", "covid_sensitivity", "covid_specificity")


class SingleLabel(Task):
    """Each film has one class; the model answers softmax probabilities over the classes."""

    name = "multiclass"
    objective = OBJECTIVE
    unit = "class"

    def demo_root(self, layout) -> Path:
        return synthetic.write_demo_dataset(layout.demo_data)

    def check_decoded(self, examples, decoded, skipped_csv: Path) -> None:
        """A class whose files all failed to decode would silently vanish from the model."""
        readable = set(manifest.class_names(decoded.examples))
        label_of = {example.path: example.label for example in examples}
        for name in manifest.class_names(examples):
            if name not in readable:
                failed = [item for item in decoded.skipped if label_of[item.path] == name]
                raise UserError(
                    f"Class {name} has no readable image: all {len(failed)} of its files were skipped "
                    f"(e.g. {failed[0].path}: {failed[0].reason}; all in {skipped_csv}). Replace them "
                    "with PNG, JPEG or DICOM files that open, or remove that class folder.")

    def ignored_columns(self, root: Path) -> list[str]:
        return manifest.ignored_columns(root)

    def split(self, config, examples, groups, table) -> tuple[np.ndarray, dict]:
        return split.split_by_group([e.label for e in examples], groups, config.fractions, config.seed), {}

    def source_audit(self, examples, ignored: list[str], label_record: dict) -> dict:
        found = sources.source_audit(examples)
        return {"ignored_columns": ignored, "audit": found.to_dict() if found else None,
                "lines": sources.summary_lines(found)}

    def encode(self, config, examples, splits: np.ndarray, label_record: dict):
        names = tuple(manifest.class_names(examples))
        if config.class_names and names != tuple(config.class_names):
            raise UserError(f"{config.layout.split} no longer matches {config.layout.config} (classes "
                            f"{', '.join(names)} against {', '.join(config.class_names)}); start over with "
                            f"`cxr-tuner search --run-dir {config.run_dir} --overwrite` and the run's flags.")
        labels = np.array([names.index(e.label) for e in examples])
        train_labels = [e.label for e, s in zip(examples, splits) if s == "train"]
        return config.replace(task=self.name, class_names=names,
                              class_weights=class_weights(train_labels, names)), labels

    def sample_weights(self, config, labels: np.ndarray) -> np.ndarray:
        names = config.class_names
        return np.array([config.class_weights[names[i]] for i in labels], "float32")

    def objective_value(self, config, labels, probs, weights) -> float:
        return weighted_loss(labels, probs, np.asarray(weights, np.float64))

    def fold_split(self, config, labels, groups):
        return split.fold_split(labels, groups, config.folds, config.seed)

    def data_lines(self, data) -> list[str]:
        config = data.config
        raw_names = manifest.class_mapping(data.examples)
        lines = []
        for i, name in enumerate(config.class_names):
            source = ", ".join(repr(r) for r in raw_names.get(name, [name]))
            per_split = " / ".join(f"{s} {int(((data.labels == i) & (data.splits == s)).sum())}" for s in SPLITS)
            lines.append(f"class {i} = {name} (from {source}): {per_split}; weight {config.class_weights[name]:.3f}")
        return lines

    def findings(self, config):
        return None

    def run_metrics(self, config) -> dict[str, str]:
        return {OBJECTIVE: "class-weighted validation loss", "val_accuracy": "validation accuracy"}

    def chance_text(self, config) -> str:
        classes = len(config.class_names)
        return f"; chance ln {classes} = {math.log(classes):.4f}" if classes > 1 else ""

    def parse_points(self, text: str | None, names):
        return operating_point.parse(text, names)

    def calibrate(self, y, raw, first, names, points, seed: int, basis: str) -> Calibrated:
        decision = calibration.choose_temperature(y, raw, seed=seed)
        temperature = decision["temperature"]
        single = decision if first is raw else calibration.choose_temperature(y, first, seed=seed)
        calibrated = calibration.scale(raw, temperature)  # what the model's TemperatureScaling layer computes
        point, refused = operating_point.choose(points, names, y, calibrated, basis)
        record = {"temperature": temperature, "single_temperature": single["temperature"],
                  "calibration_check": {**decision, "text": calibration.decision_text(decision, basis)},
                  "calibration_validation": calibration.summary(y, raw, temperature),
                  "operating_point": point, "operating_point_refused": refused}
        lines = ["temperature " + record["calibration_check"]["text"]]
        if point:
            lines.append(
                f"operating point {point['target_text']}: threshold {point['threshold']:.4f} on {point['class']} "
                f"probability ({basis} sensitivity {number_text(point['validation']['sensitivity'])}, "
                f"specificity {number_text(point['validation']['specificity'])}; {operating_point.cost_text(point)}); "
                + operating_point.guarantee_text(point))
            if point["warning"]:
                lines.append(f"warning: operating point {point['target_text']}: {point['warning']}")
        if refused:
            lines.append(operating_point.refused_text(refused))
        return Calibrated(temperature, record, lines)

    def final_card(self, record: dict) -> dict:
        k = record["ensemble_size"]
        what = (f"the mean of the probabilities of the top {k} retrained winners ({', '.join(record['members'])})"
                if k > 1 else f"the rank-1 retrained winner ({record['members'][0]})")
        fitted = ("out-of-fold predictions on train+val" if record.get("fitted_on") == FITTED_ON_FOLDS
                  else "the validation split")
        check = record.get("calibration_check")
        if check is None or check["applied"]:  # records made before the check always applied their temperature
            what += f", temperature-scaled (T = {record['temperature']:.4f}, fitted on {fitted})"
        else:
            what += (f", not temperature-scaled (T = 1: the temperature fitted on {fitted}, "
                     f"{check['fitted_temperature']:.4f}, did not lower the ECE out of sample)")
        if record.get("refit"):
            what += "; each member refit on train+val for its best epoch count after every choice was made on validation"
        if record["shared_frozen_backbone"]:
            what += "; members share one frozen backbone up to " + ", ".join(
                f"{b}'s {cut}" for b, cut in record["shared_frozen_backbone"].items())
        model = {"kind": record["kind"], "members": record["members"], "temperature": record["temperature"],
                 "temperature_applied": check is None or check["applied"], "what": what}
        if k > 1:
            model["gradcam"] = "explain with a member: RUN_DIR/winners/" + record["members"][0] + "/model.keras"
        card = {"model": model, "operating_point": record["operating_point"]}
        if record.get("operating_point_refused"):
            card["operating_point_refused"] = record["operating_point_refused"]
        return card

    def output_meaning(self) -> str:
        return "softmax probabilities in class_names order"

    def headline_metrics(self, metrics: dict) -> dict:
        headline = {name: metrics[name] for name in _CARD_HEADLINE}
        headline["macro_roc_auc"] = metrics["roc_auc"]["macro"]
        return {"n": metrics["n"], **headline, "ece": metrics["ece"], "ci_method": metrics["ci_method"]}

    def headline_lines(self, metrics: dict) -> list[str]:
        positive = metrics.get("positive_class", "COVID")
        figures = (("accuracy", metrics.get("accuracy")), ("macro F1", metrics.get("macro_f1")),
                   ("macro ROC AUC", (metrics.get("roc_auc") or {}).get("macro")),
                   (f"{positive} sensitivity", metrics.get("covid_sensitivity")),
                   (f"{positive} specificity", metrics.get("covid_specificity")))
        lines = [f"  test split, {number_text(metrics.get('n'), 'd', 'count not recorded')} images (95% bootstrap CI):"]
        return lines + [f"    {name:<20} {figure_text(figure)}" for name, figure in figures]

