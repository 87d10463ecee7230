"""The source audit: a confounded collection is flagged, a balanced one is not."""

import csv

from click.testing import CliRunner

from cxr_tuner.cli import cli
from cxr_tuner.data import synthetic
from cxr_tuner.data.manifest import Example
from cxr_tuner.data.sources import source_audit, summary_lines


def _examples(pairs):
    return [Example(f"/d/{i}.png", label, source=source) for i, (label, source) in enumerate(pairs)]


def test_confounded_sources_give_the_table_and_warnings():
    # Viral pneumonia all from one children's hospital, COVID mostly from another hospital.
    pairs = [("Viral_Pneumonia", "kids")] * 40 + [("COVID", "A")] * 36 + [("COVID", "B")] * 4 \
        + [("Normal", "B")] * 30 + [("Normal", "A")] * 10
    report = source_audit(_examples(pairs))
    assert report.table == [[36, 4, 0], [10, 30, 0], [0, 0, 40]]  # rows COVID, Normal, VP; columns A, B, kids
    assert report.cramers_v > 0.7
    assert report.source_accuracy == (36 + 30 + 40) / 120 and report.chance == 40 / 120
    lines = summary_lines(report)
    assert any("kids" in line for line in lines) and any(line.lstrip().startswith("Viral_Pneumonia") for line in lines)
    assert any("Viral_Pneumonia comes from a single source (kids)" in w for w in report.warnings)
    assert any("source alone predicts the label" in w for w in report.warnings)


def test_balanced_sources_give_no_warning():
    pairs = [(label, source) for label in ("COVID", "Normal", "Viral_Pneumonia")
             for source in ("A", "B", "C") for _ in range(20)]
    report = source_audit(_examples(pairs))
    assert report.cramers_v < 0.05 and report.source_accuracy == report.chance
    assert report.warnings == []
    assert not any(line.startswith("WARNING") for line in summary_lines(report))


def test_no_source_column_says_it_cannot_check():
    assert source_audit(_examples([("COVID", ""), ("Normal", "")])) is None
    assert "no source column" in summary_lines(None)[0]


def _with_sources(root, source_of):
    rows = list(csv.DictReader((root / "metadata.csv").open()))
    with (root / "metadata.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "patient_id", "hospital", "view"])
        for i, row in enumerate(rows):
            writer.writerow([row["path"], row["label"], row["patient_id"], source_of(row["label"], i), "PA"])
    return root


def test_data_audit_prints_the_table_and_warning_only_when_confounded(tmp_path):
    root = synthetic.write_demo_dataset(tmp_path / "d", n_per_class=8, size=32)
    runner = CliRunner()
    _with_sources(root, lambda label, i: "kids" if label == "Viral_Pneumonia" else "adults")
    confounded = runner.invoke(cli, ["data", "audit", str(root), "--out", str(tmp_path / "a.csv")])
    assert confounded.exit_code == 0, confounded.output
    assert "ignored manifest columns: view" in confounded.output
    assert "Source audit (2 source(s))" in confounded.output
    assert "WARNING: class Viral_Pneumonia comes from a single source (kids)" in confounded.output
    _with_sources(root, lambda label, i: "AB"[i % 2])
    balanced = runner.invoke(cli, ["data", "audit", str(root), "--out", str(tmp_path / "b.csv")])
    assert "Source audit (2 source(s))" in balanced.output and "WARNING" not in balanced.output
