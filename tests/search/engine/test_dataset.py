"""The data stage on a small collection whose groups are large: what its log and data.json say."""

import json

from cxr_tuner.data import synthetic
from cxr_tuner.search.engine import dataset
from cxr_tuner.search.engine.config import new_config
from cxr_tuner.search.run import _log_data
from tests.conftest import phantom_folders


def test_data_stage_warns_once_when_large_groups_pull_the_split_far_from_its_fractions(tmp_path):
    root = phantom_folders(tmp_path / "data", n_per_class=14)
    # Per class one patient with 8 films and six with one: whichever split gets the 8 is far too large.
    rows = [f"{c}/{c}-{i}.png,{c},{c}-big" if i <= 8 else f"{c}/{c}-{i}.png,{c},{c}-{i}"
            for c in synthetic.CLASS_NAMES for i in range(1, 15)]
    (root / "manifest.csv").write_text("\n".join(["path,label,patient_id", *rows]) + "\n")
    config = new_config(str(tmp_path / "run"), str(root / "manifest.csv"), image_size=32)
    data = dataset.prepare(config, progress=False)
    lines = []
    _log_data(data, lines.append)
    warnings = [line for line in lines if line.startswith("warning: the split came out")]
    assert len(warnings) == 1 and "asked 70.0% / 15.0% / 15.0%" in warnings[0]
    saved = json.loads(config.layout.findings.read_text())["fractions"]
    assert saved["warning"] == warnings[0]
    assert saved["achieved"]["train"] == data.findings.counts["train"] / data.findings.counts["used"]
    assert abs(saved["achieved"]["train"] - 0.7) > saved["margin"] or \
        abs(saved["achieved"]["test"] - 0.15) > saved["margin"]
