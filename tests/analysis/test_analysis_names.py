"""Target and source names that look like paths become safe file names in the report."""

from __future__ import annotations

import pytest

from robust_transfer.cli import main
from robust_transfer.io import safe_filename

ROWS = "source,eps,target,n,unfrozen_blocks,epochs,seed,test_acc\n"


@pytest.mark.parametrize("name", ["verdict_digits", "fig1a_accuracy_vs_n", "a-b.c_d=1,2@x+y"])
def test_plain_names_are_kept(name):
    assert safe_filename(name) == name


@pytest.mark.parametrize("name", ["cifar/10", "../../x", "/abs/folder", "folder:/d/s", "..", ".",
                                  "", ".hidden", "a\\b", "a\x00b", "x" * 300, "é"])
def test_other_names_become_one_distinct_plain_file_name(name):
    safe = safe_filename(name)
    assert safe and safe not in (".", "..") and not safe.startswith(".") and len(safe) <= 100
    assert all(c.isascii() and (c.isalnum() or c in "._+=,@-") for c in safe)
    assert safe != safe_filename(name + "!")


def test_analyze_with_path_like_targets_writes_only_inside_out(tmp_path, capsys):
    rows = [f"{s},{e},{t},{n},0,2,{seed},{0.5 + n / 100 + seed / 100 + e / 10}"
            for t in ("cifar/10", "../../x", str(tmp_path / "abs"))
            for s, e in (("natural", 0), ("robust", 0.5)) for n in (10, 20) for seed in (0, 1)]
    (tmp_path / "runs.csv").write_text(ROWS + "\n".join(rows) + "\n")
    work = tmp_path / "w" / "v"
    work.mkdir(parents=True)
    code = main(["analyze", "--csv", str(tmp_path / "runs.csv"), "--out", str(work / "a")])
    assert code == 0, capsys.readouterr().err
    outside = [p for p in tmp_path.rglob("*") if p.is_file() and work / "a" not in p.parents]
    assert outside == [tmp_path / "runs.csv"]
    verdicts = sorted(p.name for p in (work / "a" / "figures").glob("verdict_*.png"))
    assert len(verdicts) == 3
    report = (work / "a" / "report.md").read_text()
    assert all(f"figures/{v}" in report for v in verdicts)
