"""How the acquisition-shift stress test and the external sets read: the report's tables and the summary's lines.

Both come from ``metrics.json`` entries (``stress``, ``external``) whose figures the task
computed (`Task.stress_figures`), so the text is the same for classes and findings.
"""

from __future__ import annotations

import os
from pathlib import Path

from cxr_tuner.search.figures.text import figure_text, number_text

STRESS_HEADING = "Acquisition-shift stress test"
EXTERNAL_HEADING = "External sets"


def worst_family(families: dict) -> str | None:
    """The family with the lowest headline figure (the first in order on a tie); None when none is defined."""
    scored = [(row["headline"].get("value"), name) for name, row in families.items()
              if row["headline"].get("value") is not None]
    return min(scored, key=lambda pair: pair[0])[1] if scored else None


def worst_text(worst: dict | None) -> str:
    """``0.412 (COVID)``, or ``n/a (why)`` when no class or finding has the figure."""
    worst = worst or {}
    if worst.get("value") is None:
        return number_text(None, reason="no class or finding has it here")
    return f"{number_text(worst['value'])} ({worst['of']})"


def stress_line(stress: dict | None) -> str:
    """The summary's line: the worst re-rendering against the films as filmed."""
    if not stress:
        return "stress test: n/a (not run: evaluated before the stress test existed)"
    headline, worst = stress["figures"]
    name = stress.get("worst_family")
    if name is None:
        return f"stress test: n/a (no re-rendering has a {headline})"
    row, clean = stress["families"][name], stress["as_filmed"]
    if not _drops(stress):
        return (f"stress test: none of {len(stress['families'])} re-renderings lowers the {headline} "
                f"({figure_text(clean['headline'])} as filmed)")
    return (f"stress test, worst of {len(stress['families'])} re-renderings: {name}, {headline} "
            f"{figure_text(row['headline'])} (as filmed {number_text(clean['headline'].get('value'))}); "
            f"{worst} {worst_text(row['worst'])}")


def _drops(stress: dict) -> bool:
    """Whether the worst family's headline figure is below the as-filmed one (True when that one is undefined)."""
    clean = stress["as_filmed"]["headline"].get("value")
    return clean is None or stress["families"][stress["worst_family"]]["headline"]["value"] < clean


def stress_markdown(stress: dict) -> str:
    """The report's stress-test section: one row per re-rendering beside the films as filmed, and what it means."""
    headline, worst = stress["figures"]
    clean = stress["as_filmed"]["headline"].get("value")
    lines = [f"## {STRESS_HEADING}", "",
             f"Each row scores the final model on the same {stress['n']} films re-rendered the way another source "
             f"could have made them (`data/shift.py`, seed {stress['seed']}): a {headline} well below the as-filmed "
             "one means the model leans on how a film was made, and can be expected to lose about that much at a "
             "source that makes its films that way." + _worst_sentence(stress), "",
             f"| Rendering | What changes | {headline} [95% CI] | Change | {worst} |", "|---|---|---|---|---|",
             f"| as filmed | nothing | {figure_text(stress['as_filmed']['headline'])} | | "
             f"{worst_text(stress['as_filmed']['worst'])} |"]
    for name, row in stress["families"].items():
        value = row["headline"].get("value")
        change = f"{value - clean:+.3f}" if value is not None and clean is not None else ""
        lines.append(f"| {name} | {row['description']} | {figure_text(row['headline'])} | {change} "
                     f"| {worst_text(row['worst'])} |")
    return "\n".join(lines)


def _worst_sentence(stress: dict) -> str:
    name = stress.get("worst_family")
    if name is None:
        return ""
    return f" Worst: **{name}**." if _drops(stress) else " None of them lowers it here."


def external_markdown(sets: list, cells, out: Path) -> str:
    """The report's table of the test split beside each external set scored in the same evaluation.

    Args:
        sets: ``(name, metrics.json content, report folder or None for this report)``, the test split first.
        cells: The task's ``comparison_cells`` (a set's ``metrics.json`` -> ``{column: text}``).
        out: The test split's report folder (links are relative to it).
    """
    test = sets[0][1]
    columns = list(cells(test))
    worst = test["stress"]["figures"][1]
    lines = [f"## {EXTERNAL_HEADING}", "",
             "The final model scored on labelled sets from other sources after the test split, each with its own "
             "report and stress test: a drop from the test split is what to expect at a source like it.", "",
             "| Set | n | " + " | ".join(columns) + f" | {worst} | Worst re-rendering | Report |",
             "|" + "---|" * (len(columns) + 5)]
    for name, metrics, report in sets:
        stress = metrics.get("stress") or {}
        family = stress.get("worst_family")
        shifted = (f"{family}: {number_text(stress['families'][family]['headline'].get('value'))}" if family
                   else number_text(None, reason="no re-rendering has the figure" if stress else "not run"))
        link = f"[report]({Path(os.path.relpath(Path(report) / 'report.html', out)).as_posix()})" if report \
            else "this report"
        lines.append(f"| {name} | {metrics.get('n')} | " + " | ".join(cells(metrics).values())
                     + f" | {worst_text((stress.get('as_filmed') or {}).get('worst'))} | {shifted} | {link} |")
    return "\n".join(lines)
