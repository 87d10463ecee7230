"""Files written whole: readable by whoever the umask lets read any new file."""

import os
import stat
import threading

import numpy as np
import pytest

from cxr_tuner.data import files


@pytest.fixture
def umask():
    def set_to(mask):
        os.umask(mask)

    before = os.umask(0o022)
    yield set_to
    os.umask(before)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_get_the_mode_the_umask_gives(tmp_path, umask, mask, expected):
    umask(mask)
    files.write_json(tmp_path / "a.json", {"x": 1})
    files.write_csv(tmp_path / "b.csv", ["path"], [["x"]])
    files.write_npz(tmp_path / "c.npz", x=np.zeros(2))
    files.linked(tmp_path / "d.lock", "{}")
    (tmp_path / "plain.txt").write_text("as open() makes it")
    for path in tmp_path.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == expected, path.name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.csv", "c.npz", "d.lock", "plain.txt"]


def test_linked_creates_a_whole_file_once(tmp_path):
    path = tmp_path / "claim"
    results = []
    threads = [threading.Thread(target=lambda i=i: results.append((files.linked(path, f"taker {i}\n"), i)))
               for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [i for won, i in results if won]
    assert len(winners) == 1 and path.read_text() == f"taker {winners[0]}\n"
    assert [p.name for p in tmp_path.iterdir()] == ["claim"]  # no temporary file left behind
