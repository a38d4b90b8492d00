"""Study specs, validation, the results store, resuming, failure isolation and the CLI."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from study_support import make_sources, sleep_run, write_spec

from robust_transfer.cli import main
from robust_transfer.errors import ConfigError, RobustTransferError
from robust_transfer.study import (
    MissingInputsError,
    export_results,
    load_results,
    load_spec,
    plan_study,
    run_study,
    spec_text,
    study_status,
)
from robust_transfer.study.lock import DriverLock
from robust_transfer.study.presets import resolve_spec_path

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    return make_sources(tmp_path_factory.mktemp("sources"))


@pytest.fixture
def spec_path(tmp_path, sources):
    return write_spec(tmp_path, sources)


# --- specs and run ids ---------------------------------------------------------------
def test_expansion_and_ids_do_not_depend_on_yaml_order(tmp_path, sources):
    a = load_spec(write_spec(tmp_path, sources))
    b = load_spec(write_spec(tmp_path, sources, "b.yaml", """\
        # same study, keys and list items reordered
        recipe: {batch_size: 32, lr: 0.05}
        seeds: [1, 0]
        epochs: [2]
        unfrozen_blocks: 0
        train_images: [60, 30]
        """))
    assert len(a.runs()) == 8
    assert {r.run_id for r in a.runs()} == {r.run_id for r in b.runs()}


def test_relative_checkpoint_paths_keep_ids_when_the_folder_moves(tmp_path, sources):
    import shutil

    from robust_transfer.study import resolve_study

    first = tmp_path / "a"
    first.mkdir()
    for f in sources["natural"].parent.glob("natural.*"):
        shutil.copy(f, first / f.name)
    (first / "s.yaml").write_text("sources: [{model: natural.safetensors, label: nat}]\n"
                                  "targets: [digits]\n")
    moved = shutil.copytree(first, tmp_path / "b")
    a, b = load_spec(first / "s.yaml"), load_spec(moved / "s.yaml")
    assert [r.run_id for r in a.runs()] == [r.run_id for r in b.runs()]
    assert resolve_study(b).sources["nat"].path == str(moved / "natural.safetensors")


def test_changing_a_recipe_value_makes_new_runs_and_lists_grid(tmp_path, sources):
    base = {r.run_id for r in load_spec(write_spec(tmp_path, sources)).runs()}
    grid = load_spec(write_spec(tmp_path, sources, "g.yaml", """\
        train_images: [30, 60]
        epochs: 2
        seeds: [0, 1]
        recipe: {lr: [0.05, 0.01], batch_size: 32}
        """)).runs()
    assert len(grid) == 16
    assert base < {r.run_id for r in grid}, "lr 0.05 runs keep their ids; lr 0.01 ones are new"


def test_sub_grids_are_unioned_without_repeats(tmp_path, sources):
    spec = load_spec(write_spec(tmp_path, sources, body="""\
        epochs: 2
        grid:
          - {train_images: [30, 60], seeds: [0, 1]}
          - {train_images: [60, all], seeds: [0]}
        """))
    assert len(spec.runs()) == 2 * (4 + 1)
    assert {r.n_label for r in spec.runs()} == {"30", "60", "all"}


@pytest.mark.parametrize("body, match", [
    ("epochs: [2\nseeds: [0]\n", r"line \d+: malformed YAML"),
    ("epochs: 2\nepoch: 3\n", r"line 7: unknown key 'epoch' in the study spec; valid: name, "),
    ("recipe: {lrr: 0.1}\n", r"line 6: unknown key 'lrr' in recipe; valid: lr, momentum"),
    ("recipe: {schedule: linear}\n", r"unknown schedule 'linear'; valid: step, cosine"),
    ("train_images: [10, -5]\n", r"line 6: train_images: must be a positive integer or 'all'"),
    ("epochs: 2\nepochs: 3\n", r"line 7: key 'epochs' is given twice"),
])
def test_malformed_specs_name_the_line(tmp_path, sources, body, match):
    with pytest.raises(ConfigError, match=match):
        load_spec(write_spec(tmp_path, sources, body=body))


def _resolve_error(tmp_path, text: str) -> str:
    path = tmp_path / "bad.yaml"
    path.write_text(textwrap.dedent(text))
    with pytest.raises(RobustTransferError) as info:
        run_study(path, tmp_path / "out")
    assert not (tmp_path / "out").exists(), "nothing may be written before the checks pass"
    return str(info.value)


def test_bad_names_and_sizes_are_refused_before_any_run(tmp_path, sources):
    nat = sources["natural"]
    msg = _resolve_error(tmp_path, f"sources: [{nat}]\ntargets: [digitz]\n")
    assert "unknown dataset 'digitz' (did you mean 'digits'?); valid:" in msg
    msg = _resolve_error(tmp_path, "sources: [no-such-model]\ntargets: [digits]\n")
    assert "unknown zoo model 'no-such-model'; valid:" in msg
    msg = _resolve_error(tmp_path, f"sources: [{nat}]\ntargets: [digits]\ntrain_images: [5000]\n")
    assert "line 3: train_images 5000 is larger than digits's training set (1348 images)" in msg
    msg = _resolve_error(tmp_path, f"sources: [{nat}]\ntargets: [digits]\nunfrozen_blocks: [4]\n")
    assert "line 3: unfrozen_blocks 4 is more than source" in msg and "has 3 blocks" in msg


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_preflight_refuses_a_damaged_source_before_creating_the_study(tmp_path, sources, damage, capsys):
    import shutil

    folder = tmp_path / "src"
    folder.mkdir()
    for f in sources["robust"].parent.glob("robust.*"):
        shutil.copy(f, folder / f.name)
    weights = folder / "robust.safetensors"
    data = bytearray(weights.read_bytes())
    if damage == "truncate":
        data = data[: len(data) - 100]
    else:
        data[-50] ^= 0xFF  # one flipped byte in a tensor: still a readable file
    weights.write_bytes(bytes(data))
    spec = tmp_path / "s.yaml"
    spec.write_text(f"sources: [{{model: {weights}, label: r}}]\ntargets: [digits]\n")
    out = tmp_path / "study"
    assert main(["study", "run", str(spec), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert "source 'r'" in err and "does not match the sha256" in err
    assert not out.exists()


def test_missing_checkpoints_and_datasets_are_all_listed(tmp_path, sources, monkeypatch):
    monkeypatch.setenv("ROBUST_TRANSFER_ZOO", str(tmp_path / "zoo"))
    text = f"""\
        sources: [{tmp_path / 'gone.safetensors'}, robustness-resnet50-l2-eps3]
        targets: [digits, cifar10]
        data_root: {tmp_path / 'data'}
        """
    with pytest.raises(MissingInputsError) as info:
        path = tmp_path / "m.yaml"
        path.write_text(textwrap.dedent(text))
        run_study(path, tmp_path / "out")
    fixes = [str(m) for m in info.value.items]
    assert len(fixes) == 3
    assert any("gone.safetensors does not exist" in f for f in fixes)
    assert any(f"imagenet_l2_3_0.pt is not in {tmp_path / 'zoo'}" in f for f in fixes)
    assert any("dataset cifar10" in f and "cifar-10-batches-py" in f for f in fixes)
    plan = plan_study(path, measure=False)  # a dry run reports them instead of refusing
    assert plan.total_runs == 4 and len(plan.missing) == 3 and plan.estimate.flops > 0


# --- running, the store, resuming ----------------------------------------------------
def test_study_runs_resumes_and_loads_per_contract(tmp_path, spec_path):
    out = tmp_path / "study"
    first = run_study(spec_path, out)
    assert (first.ran, first.finished, first.failed, first.total_runs) == (8, 8, 0, 8)
    again = run_study(spec_path, out)
    assert (again.ran, again.skipped) == (0, 8)
    runs, epochs = load_results(out)
    assert len(runs) == 8 and runs["run_id"].is_unique
    assert {"natural": 0.0, "robust": 0.5} == dict(zip(runs["source"], runs["source_eps"], strict=True))
    assert set(runs["source_norm"]) == {"none", "l2"}
    assert set(runs["n"]) == {30, 60} and set(runs["n_label"]) == {"30", "60"}
    assert runs["unfrozen_blocks"].tolist() == ["0"] * 8 and runs["epochs"].eq(2).all()
    assert runs["test_acc"].between(0, 1).all() and runs["lr"].eq(0.05).all()
    assert len(epochs) == 16
    assert all(e == [1, 2] for e in epochs.groupby("run_id")["epoch"].apply(list))
    last = epochs[epochs.epoch == 2].set_index("run_id")["test_acc"]
    assert (last.sort_index().values == runs.set_index("run_id")["test_acc"].sort_index().values).all()
    status = study_status(out)
    assert (status.total, status.finished, status.failed, status.missing) == (8, 8, 0, 0)
    assert "name: tiny" in spec_text(out) and (out / "spec.yaml").is_file()


def test_eval_every_leaves_nan_between_evaluations(tmp_path, sources):
    path = write_spec(tmp_path, sources, body="train_images: [30]\nepochs: 3\n"
                      "recipe: {eval_every: 2, batch_size: 32}\n")
    run_study(path, tmp_path / "s")
    _, epochs = load_results(tmp_path / "s")
    evaluated = epochs.groupby("epoch")["test_acc"].apply(lambda s: s.notna().all())
    assert evaluated.to_dict() == {1: False, 2: True, 3: True}


def test_different_spec_is_refused_unless_extended(tmp_path, sources, spec_path):
    out = tmp_path / "study"
    run_study(spec_path, out, run_fn=sleep_run)
    other = write_spec(tmp_path, sources, "other.yaml", "train_images: [90]\nepochs: 2\n")
    assert plan_study(other, out, measure=False).other_study
    with pytest.raises(RobustTransferError, match="holds a different study .*--extend"):
        run_study(other, out, run_fn=sleep_run)
    summary = run_study(other, out, extend=True, run_fn=sleep_run)
    assert summary.ran == 2 and summary.store_total == 10
    assert run_study(spec_path, out, run_fn=sleep_run).ran == 0, "the first spec is still known"


def test_failed_runs_are_isolated_recorded_and_retried(tmp_path, spec_path, monkeypatch):
    import robust_transfer.study.worker as transfer  # the worker's own name for finetune

    real = transfer.finetune

    def flaky(*args, seed, **kwargs):
        if seed == 1:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(*args, seed=seed, **kwargs)

    monkeypatch.setattr(transfer, "finetune", flaky)
    out = tmp_path / "study"
    summary = run_study(spec_path, out)
    assert (summary.finished, summary.failed) == (4, 4)
    assert all("RuntimeError: CUDA out of memory" in e for _, e in summary.failures)
    assert run_study(spec_path, out).ran == 0, "failed runs wait for --retry-failed"
    monkeypatch.setattr(transfer, "finetune", real)
    retried = run_study(spec_path, out, retry_failed=True)
    assert (retried.ran, retried.finished) == (4, 4)
    assert study_status(out).finished == 8


def test_a_second_driver_is_refused(tmp_path, spec_path):
    out = tmp_path / "study"
    with DriverLock(out), pytest.raises(RobustTransferError, match="being run by another process"):
        run_study(spec_path, out)


def test_killed_study_resumes_with_every_run_exactly_once(tmp_path, sources):
    spec = write_spec(tmp_path, sources, body="""\
        train_images: [100]
        unfrozen_blocks: [all]
        epochs: 3
        seeds: [0, 1, 2, 3, 4, 5]
        recipe: {batch_size: 16}
        """)
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "robust_transfer", "study", "run", str(spec),
                             "--out", str(out), "--quiet"], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_finished(out, at_least=2, proc=proc)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    with sqlite3.connect(out / "study.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    before = study_status(out)
    assert 2 <= before.finished < 12, "the kill must land mid-study"
    summary = run_study(spec, out)
    assert summary.skipped == before.finished and summary.ran == 12 - before.finished
    runs, epochs = load_results(out)
    assert len(runs) == 12 and runs["run_id"].is_unique
    assert epochs.groupby("run_id").size().eq(3).all() and len(epochs) == 36
    clean = run_study(spec, tmp_path / "clean")
    assert clean.finished == 12
    fresh, _ = load_results(tmp_path / "clean")
    assert fresh.set_index("run_id")["test_acc"].equals(runs.set_index("run_id")["test_acc"])


def _wait_for_finished(out: Path, at_least: int, proc, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the study ended before it could be killed"
        if (out / "study.db").exists():
            try:
                if study_status(out).finished >= at_least:
                    return
            except (sqlite3.Error, RobustTransferError):
                pass  # the database is being created
        time.sleep(0.05)
    raise AssertionError("the study did not finish runs in time")


def test_export_writes_csv_and_parquet(tmp_path, spec_path):
    out = tmp_path / "study"
    run_study(spec_path, out, run_fn=sleep_run)
    csv_runs, csv_epochs = export_results(out, "csv")
    assert csv_runs.read_text().count("\n") == 9 and csv_epochs.read_text().count("\n") == 25
    pytest.importorskip("pyarrow")
    import pandas as pd

    runs_pq, _ = export_results(out, "parquet", tmp_path / "pq")
    assert len(pd.read_parquet(runs_pq)) == 8


# --- the CLI -------------------------------------------------------------------------
def test_cli_run_status_export_and_dry_run(tmp_path, spec_path, capsys):
    out = str(tmp_path / "study")
    assert main(["study", "run", str(spec_path), "--out", out, "--dry-run"]) == 0
    assert "8 runs, 0 already finished, 0 failed, 8 to run" in capsys.readouterr().out
    assert main(["study", "run", str(spec_path), "--out", out]) == 0
    captured = capsys.readouterr()
    assert "study: done 8/8 runs (100%)" in captured.err and "; 0 failed, 0 running" in captured.err
    assert "ran 8 run(s)" in captured.out
    assert main(["study", "run", str(spec_path), "--out", out, "--dry-run"]) == 0
    assert "8 already finished" in capsys.readouterr().out
    assert main(["study", "status", out]) == 0
    assert "8 runs: 8 finished, 0 failed, 0 running, 0 pending" in capsys.readouterr().out
    assert main(["study", "export", out, "--format", "csv"]) == 0
    assert capsys.readouterr().out.strip().endswith("epochs.csv")


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, sources, capsys):
    bad = write_spec(tmp_path, sources, body="recipe: {lr: [0.1\n")
    assert main(["study", "run", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "malformed YAML" in err and "line" in err
    assert main(["study", "status", str(tmp_path / "nothing")]) == 2
    assert "holds no study" in capsys.readouterr().err


def test_embedded_preset_fits_its_budget():
    plan = plan_study(resolve_spec_path("embedded"), measure=False)
    runs = plan.spec.runs()
    assert not plan.missing, f"embedded study needs: {plan.missing}"
    assert len({r.seed for r in runs}) >= 3 and len({r.n for r in runs}) >= 4
    assert len({r.unfrozen_blocks for r in runs}) >= 2 and {r.target for r in runs} == {"digits"}


def test_paper_preset_expands_to_the_paper_grid():
    spec = load_spec(resolve_spec_path("paper"))
    runs = spec.runs()
    assert {r.target for r in runs} == {"cifar10", "cifar100", "svhn", "fmnist", "kmnist", "mnist"}
    assert {r.unfrozen_blocks for r in runs} == {0, 1, 3, 9}
    assert {r.n for r in runs} == {100 * 2 ** k for k in range(9)} | {None}
    assert len(runs) == 4 * 6 * 4 * (5 * 10 + 2 * 10 + 2 * 5 + 1)


def test_yaml_aliases_within_the_bounds_still_load():
    from robust_transfer.study.yamlio import load_yaml

    data, lines = load_yaml("base: &r {lr: 0.1, batch_size: 32}\ngrid:\n  - {recipe: *r}\n"
                            "  - {recipe: *r, seeds: [1]}\n", "s.yaml")
    assert data["grid"][0]["recipe"] == data["grid"][1]["recipe"] == {"lr": 0.1, "batch_size": 32}
    assert lines[("grid", 1)] == 4
