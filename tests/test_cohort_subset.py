"""`fmrilm cohort subset`: one part of a stored split as a cohort of its own."""

from __future__ import annotations

import numpy as np

from fmrilm.atlas import Atlas
from fmrilm.cli import main
from fmrilm.cohort import Cohort, load_cohort
from fmrilm.scan import Scan
from fmrilm.splits import load_split


def _cohort(tmp_path):
    atlas = Atlas.builtin("dosenbach160").subset(range(0, 160, 8))
    rng = np.random.default_rng(0)
    scans, phenos = [], []
    for i in range(12):
        site = f"site-{i % 3}"
        scans.append(Scan(rng.standard_normal((40, atlas.n_regions)), 2.0, atlas, scan_id=f"s{i}", site=site))
        phenos.append({"diagnosis": "patient" if i % 2 else "control"})
    return Cohort.from_scans(scans, phenos, atlas=atlas).save(tmp_path / "c")


def test_subset_writes_exactly_the_train_part(tmp_path, capsys):
    folder = _cohort(tmp_path)
    assert main(["cohort", "split", str(folder), "--kind", "leave-sites-out", "--test-sites", "site-0"]) == 0
    out = tmp_path / "train"
    assert main(["cohort", "subset", str(folder), "--split", "leave-sites-out", "--out", str(out)]) == 0
    split = load_split(folder, "leave-sites-out")
    full, train = load_cohort(folder), load_cohort(out)
    expected = {full.dataset[int(i)]["scan_id"] for i in split["train"]}
    assert set(train.dataset["scan_id"]) == expected
    assert "site-0" not in set(train.dataset["site"])
    np.testing.assert_array_equal(train.scan(0).timeseries, full.scan(int(split["train"][0])).timeseries)


def test_subset_of_an_unknown_part_is_one_clear_error(tmp_path, capsys, monkeypatch):
    folder = _cohort(tmp_path)
    monkeypatch.chdir(tmp_path)  # the relative --out below lands here, where the test looks for it
    main(["cohort", "split", str(folder), "--kind", "leave-sites-out", "--test-sites", "site-0"])
    capsys.readouterr()
    code = main(
        ["cohort", "subset", str(folder), "--split", "leave-sites-out", "--part", "val", "--out", "x"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "no part 'val'" in err and "Fix:" in err
    assert not (tmp_path / "x").exists()  # nothing half-written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]
