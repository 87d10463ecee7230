"""Single-label classes: one softmax over the classes, class-weighted cross-entropy, one operating point."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from cxr_tuner.data import audit, cache, labels as label_files, manifest, sources, split, synthetic
from cxr_tuner.data.class_weights import class_weights
from cxr_tuner.data.errors import UserError
from cxr_tuner.data.split import SPLITS
from cxr_tuner.hypermodels.classifier import OBJECTIVE, weighted_loss
from cxr_tuner.search.engine.task_base import FITTED_ON_FOLDS, Calibrated, Films, Page, Task
from cxr_tuner.search.figures import calibration, class_report, operating_point
from cxr_tuner.search.figures.metrics import classification_metrics, roc_curves
from cxr_tuner.search.figures.text import figure_text, number_text

_CARD_HEADLINE = ("accuracy", "macro_f1", "covid_sensitivity", "covid_specificity")


class SingleLabel(Task):
    """Each film has one class; the model answers softmax probabilities over the classes."""

    name = "multiclass"
    objective = OBJECTIVE
    stress_names = ("macro F1", "recall of the worst class")

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
        labels = [e.label for e in examples]
        if config.val_sources != "apart":
            return split.split_by_group(labels, groups, config.fractions, config.seed), {}
        sources = [e.source for e in examples]
        apart = split.source_apart_classes(labels, sources)
        line = (f"validation keeps sources apart from training in {', '.join(apart)}: its loss measures transfer"
                if apart else "--val-sources apart: no class has films from two or more sources; "
                              "validation is split by patient as usual")
        return split.split_by_group(labels, groups, config.fractions, config.seed, sources), \
            {"lines": [*table.lines, line], "sources_apart": apart}

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

    def calibrate(self, y, raw, first, names, points, seed: int, basis: str, groups=None) -> Calibrated:
        decision = calibration.choose_temperature(y, raw, seed=seed, groups=groups)
        temperature = decision["temperature"]
        single = decision if first is raw else calibration.choose_temperature(y, first, seed=seed, groups=groups)
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

    def check_external(self, config, data: str, names) -> list:
        """The set's labelled files, refused when they are findings or a class is one the run does not know."""
        table = label_files.read(data)
        if table.task != self.name:
            raise UserError(f"{data} labels findings (several per film); this run's model tells one class of "
                            f"{', '.join(names)}: pass a folder per class or a path,label CSV.")
        examples = table.examples
        unknown = sorted({e.label for e in examples} - set(names))
        if unknown:
            raise UserError(f"{data} holds classes the model does not know: {', '.join(unknown)} (it knows "
                            f"{', '.join(names)}); remove or rename those folders/labels.")
        return examples

    def external_films(self, config, data: str, log) -> Films:
        """Decodes an external labelled set and maps its classes onto the run's by name."""
        examples = self.check_external(config, data, config.class_names)
        # A cache of its own: sharing the run's would reorder it and force the test split to re-decode.
        decoded = cache.load_decoded(examples, config.image_size, config.layout.external_cache, progress=False)
        for skipped in decoded.skipped:
            log(f"skipped {skipped.path}: {skipped.reason}")
        labels = np.array([config.class_names.index(e.label) for e in decoded.examples])
        return Films(decoded.images, labels, [e.path for e in decoded.examples],
                     [e.source for e in decoded.examples], audit.leak_groups(decoded.examples, decoded.images))

    def test_metrics(self, films: Films, probs, names, record, seed: int) -> dict:
        return classification_metrics(films.labels, probs, names, seed=seed, groups=films.groups)

    def stress_figures(self, films: Films, probs, names, metrics, seed: int) -> dict:
        """Macro-F1 with its CI, and the lowest recall of a class the set holds."""
        found = classification_metrics(films.labels, probs, names, seed=seed, groups=films.groups)
        recalls = {name: row["recall"] for name, row in found["per_class"].items() if row["support"]}
        worst = min(recalls, key=recalls.get) if recalls else None
        return {"headline": found["macro_f1"], "worst": {"of": worst, "value": recalls.get(worst)}}

    def final_figures(self, record, films: Films, probs, raw, single, names, metrics):
        sections, pictures = class_report.final_figures(record, films.labels, probs, raw, single, names, metrics,
                                                        groups=films.groups)
        return sections, {"Calibration, operating point, single best and final model":
                          class_report.final_markdown(sections)}, pictures

    def prediction_table(self, films: Films, probs, names, metrics) -> tuple[list, list]:
        rows = [[file, names[label], names[row.argmax()], *(f"{p:.6f}" for p in row)]
                for file, label, row in zip(films.paths, films.labels, probs)]
        return ["path", "true", "predicted", *(f"p_{name}" for name in names)], rows

    def pictures(self, films: Films, probs, names, metrics) -> dict:
        return {"Confusion matrix": {"kind": "confusion", "file": "confusion_matrix.png",
                                     "matrix": metrics["confusion_matrix"]["matrix"], "names": names},
                "ROC curves": {"kind": "roc", "file": "roc.png", "curves": roc_curves(films.labels, probs, names),
                               "aucs": metrics["roc_auc"]["per_class"]}}

    def gallery_pages(self, films: Films, probs, names, metrics, per_page: int = 12) -> list[Page]:
        """Per class, a page of correctly and one of incorrectly classified films, most confident first (a
        confident mistake is the one worth looking at); each heatmap explains the predicted class."""
        predicted, confidence = probs.argmax(axis=1), probs.max(axis=1)
        pages = []
        for index, name in enumerate(names):
            for kind, chosen in (("correct", predicted == index), ("incorrect", predicted != index)):
                rows = np.flatnonzero((films.labels == index) & chosen)
                rows = rows[np.argsort(-confidence[rows], kind="stable")][:per_page]
                if len(rows):
                    pages.append(Page(f"{name} {kind}", f"{name}-{kind}.png",
                                      f"{name}: {kind}ly classified ({len(rows)} shown)", rows, predicted[rows],
                                      [f"true {name}\npred {names[predicted[r]]} {confidence[r]:.2f}" for r in rows]))
        return pages

    def energy_outputs(self, probs):
        return probs.argmax(axis=1)

    def energy_figures(self, shares, films: Films, probs, names, uniform: float, count: int = 12):
        """The share of each film's heatmap inside the chest box per true class, and the films with the least."""
        energy = class_report.energy_summary(shares, films.labels, names, uniform)
        order = np.argsort(np.where(np.isfinite(shares), shares, np.inf), kind="stable")[:count]
        predicted = probs.argmax(axis=1)
        page = Page("least energy inside the chest box", "least-in-chest.png",
                    "Least Grad-CAM energy inside the chest box (dashed)", order, predicted[order],
                    [f"true {names[films.labels[r]]}\npred {names[predicted[r]]} in box {shares[r]:.2f}"
                     for r in order], box=True, listed=False) if len(order) else None
        return energy, page

    def probe_rows(self, labels, seed: int, most: int):
        """All, or ``most`` stratified by class: a linear head on a few hundred features per class is as good
        as on thousands, and each film is a forward pass."""
        rows = np.arange(len(labels))
        if len(rows) <= most:
            return rows
        kept, _ = train_test_split(rows, train_size=most, stratify=labels, random_state=seed)
        return np.sort(kept)

    def probe_figures(self, films: Films, hidden, only, features, train_features, train_labels, names, seed: int):
        head = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced"))
        head.fit(train_features, train_labels)
        fresh = np.zeros((len(films.labels), len(names)))
        fresh[:, head.classes_] = head.predict_proba(features)
        return {name: class_report.probe_scores(films.labels, probs, names, seed, films.groups)
                for name, probs in (("winner_chest_hidden", hidden), ("winner_chest_only", only),
                                    ("fresh_head_chest_hidden", fresh))}

    def per_source(self, films: Films, probs, names) -> dict:
        return class_report.per_source(films.labels, probs, films.sources, names, films.groups)

    def report_parts(self, metrics: dict) -> list[str]:
        return class_report.report_parts(metrics)

    def report_sections(self, checks: dict, out: Path, labels: dict, config) -> dict[str, str]:
        return {"Shortcut checks": class_report.checks_markdown(checks, out)}

    def verdict(self, sets, checks) -> str:
        return class_report.verdict_markdown(sets, checks)

    def comparison_cells(self, metrics: dict) -> dict[str, str]:
        positive = metrics.get("positive_class", "COVID")
        return {"Accuracy [95% CI]": figure_text(metrics.get("accuracy")),
                "Macro F1 [95% CI]": figure_text(metrics.get("macro_f1")),
                f"{positive} sensitivity": figure_text(metrics.get("covid_sensitivity"))}

    def report_title(self, winner: str) -> str:
        return f"Evaluation of {winner}"

    def gallery_text(self) -> tuple[str, str]:
        return "Grad-CAM galleries", "The heatmap shows where the model looked for the class it predicted " \
                                     "(most confident first)."

    def opening_line(self, winner: str, films: Films, external: bool, names) -> str:
        return f"evaluate: {winner} on {len(films.images)} {'external' if external else 'test'} images"

    def closing_lines(self, metrics: dict, checks: dict, out: Path) -> list[str]:
        probe = [class_report.probe_line(checks)] if checks.get("probe") else []
        return probe + [class_report.result_line(metrics, out)]

    def decision_rule(self, record: dict | None):
        """The operating point chosen on validation, or None (argmax)."""
        return (record or {}).get("operating_point")

    def decide(self, row, names, rule) -> dict:
        """The operating point's rule, else the most probable class."""
        point, argmax = rule, names[int(row.argmax())]
        if not point:
            return {"decision": argmax, "decided_by": "argmax (no operating point)", "argmax": argmax}
        index = names.index(point["class"])
        decided = names[int(operating_point.decide(row[None], index, point["threshold"])[0])]
        return {"decision": decided, "decided_by": f"operating point: {point['how_to_apply']}", "argmax": argmax,
                "operating_point": {"class": point["class"], "threshold": point["threshold"],
                                    "called": bool(row[index] >= point["threshold"])}}

    def output_meaning(self) -> str:
        return "softmax probabilities in class_names order"

    def headline_metrics(self, metrics: dict) -> dict:
        headline = {name: metrics[name] for name in _CARD_HEADLINE}
        headline["macro_roc_auc"] = metrics["roc_auc"]["macro"]
        return {"n": metrics["n"], **headline, "ece": metrics["ece"], "ci_method": metrics["ci_method"]}

    def headline_lines(self, metrics: dict, title: str = "test split") -> list[str]:
        positive = metrics.get("positive_class", "COVID")
        figures = (("accuracy", metrics.get("accuracy")), ("macro F1", metrics.get("macro_f1")),
                   ("macro ROC AUC", (metrics.get("roc_auc") or {}).get("macro")),
                   (f"{positive} sensitivity", metrics.get("covid_sensitivity")),
                   (f"{positive} specificity", metrics.get("covid_specificity")))
        lines = [f"  {title}, {number_text(metrics.get('n'), 'd', 'count not recorded')} images (95% bootstrap CI):"]
        return lines + [f"    {name:<20} {figure_text(figure)}" for name, figure in figures]

