"""Source audit: does where an image came from already tell its label?

Published COVID-19 X-ray classifiers mostly learnt the hospital, not the disease
(see docs/shortcuts.md). With a ``source`` column in the manifest this audit prints a
class-by-source table and two figures of how well the source alone predicts the label:
Cramér's V of the table (0 = independent, 1 = the source fixes the label; scipy's
``association``) and the accuracy of guessing each image's label as its source's most
common class, beside chance (always guessing the most common class).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy.stats.contingency import association

# Above these the label is called predictable from the source.
STRONG_ASSOCIATION = 0.3  # Cramér's V; 0.1 weak, 0.3 moderate, 0.5 strong (Cohen's rule of thumb)
ACCURACY_GAIN = 0.10  # source-guess accuracy minus chance


@dataclass(frozen=True)
class SourceAudit:
    """What the source audit found.

    Attributes:
        classes: Class names, table rows.
        sources: Source names, table columns ("" when an image has none: shown as "(none)").
        table: ``table[i][j]`` = images of class i from source j.
        cramers_v: Cramér's V of the table (None with a single source or class).
        source_accuracy: Accuracy of predicting the label as the source's most common class.
        chance: Accuracy of always predicting the most common class.
        warnings: One line per finding a user should act on.
    """

    classes: list
    sources: list
    table: list
    cramers_v: float | None
    source_accuracy: float
    chance: float
    warnings: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def source_audit(examples) -> SourceAudit | None:
    """Audits the examples' ``source`` against their ``label``; None when no example has a source."""
    examples = list(examples)
    if not any(e.source for e in examples):
        return None
    classes = sorted({e.label for e in examples})
    sources = sorted({e.source for e in examples})
    counts = Counter((e.label, e.source) for e in examples)
    table = np.array([[counts[(c, s)] for s in sources] for c in classes])
    n = table.sum()
    cramers_v = float(association(table, method="cramer")) if min(table.shape) > 1 else None
    source_accuracy = float(table.max(axis=0).sum() / n)
    chance = float(table.sum(axis=1).max() / n)
    return SourceAudit(classes, sources, table.tolist(), cramers_v, source_accuracy, chance,
                       _warnings(classes, sources, table, cramers_v, source_accuracy, chance))


def _warnings(classes, sources, table, cramers_v, source_accuracy, chance) -> list[str]:
    lines = []
    if len(sources) > 1:
        for name, row in zip(classes, table):
            used = [s or "(none)" for s, count in zip(sources, row) if count]
            if len(used) == 1:
                lines.append(f"WARNING: class {name} comes from a single source ({used[0]}): a model can "
                             "learn that source's look instead of the disease.")
    predictable = (cramers_v is not None and cramers_v >= STRONG_ASSOCIATION) \
        or source_accuracy - chance >= ACCURACY_GAIN
    if predictable:
        lines.append(f"WARNING: the source alone predicts the label (Cramér's V {_v(cramers_v)}, accuracy "
                     f"{source_accuracy:.3f} vs chance {chance:.3f}): test on other sources "
                     "(`evaluate --data`) and read the chest-hidden probe before trusting the figures.")
    return lines


def summary_lines(report: SourceAudit | None) -> list[str]:
    """Human-readable lines: the class-by-source table, the two figures and the warnings."""
    if report is None:
        return ["Source audit: no source column (source, site, hospital or dataset) in the manifest; "
                "the source confound cannot be checked."]
    names = [s or "(none)" for s in report.sources]
    width = max(len(c) for c in report.classes) + 2
    lines = [f"Source audit ({len(names)} source(s)): images per class and source",
             "  " + " " * width + " | ".join(names)]
    for name, row in zip(report.classes, report.table):
        lines.append(f"  {name:<{width}}" + " | ".join(f"{count:>{len(s)}}" for count, s in zip(row, names)))
    lines.append(f"  Cramér's V {_v(report.cramers_v)}; label from source alone: accuracy "
                 f"{report.source_accuracy:.3f} (chance {report.chance:.3f})")
    return lines + report.warnings


def _v(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"
