"""Issue 22 (items 6, 8-11, 13-15): what the bad-input table cannot see.

The table (``test_bad_inputs.py``) checks the form of a refusal; these tests check what
the messages say, what interrupted commands leave, and the behaviour behind the fixes:
resource bounds, non-finite runs, the cost of robust evaluation, help texts.
"""

from __future__ import annotations

import math
import os
import signal
import textwrap

import pytest
import torch
from cli_support import run_cli as run

from robust_transfer.cli import build_parser
from robust_transfer.errors import ConfigError, NonFiniteError
from robust_transfer.io import staged_dir
from robust_transfer.models import build_architecture, save_model
from robust_transfer.study.machine import MAX_THREADS_PER_CORE, Machine, check_resources


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = build_architecture("small_resnet", 10, mean=(0.3,) * 3, std=(0.35,) * 3, input_size=16)
    return save_model(model, tmp_path_factory.mktemp("ck") / "m", {"source_dataset": "digits"})


# --- 13: messages that name the right thing --------------------------------------------
@pytest.mark.parametrize("argv, says", [
    (["influence", "-c", "{ckpt}", "--dataset", "digits", "--test-n", "100000", "--out", "{tmp}/i"],
     "asked for 100000 test images but digits:test has only 449; use --test-n 449 or less"),
    (["saliency", "-c", "{ckpt}", "--dataset", "digits", "--count", "1000", "--out", "{tmp}/s"],
     "asked for 1000 test images but digits:test has only 449; use --count 449 or less"),
    (["evaluate", "{ckpt}", "--dataset", "digits", "--images", "100000"],
     "asked for 100000 test images but digits has only 449; use --images 449 or less"),
])
def test_too_many_images_names_the_split_and_the_option(argv, says, ckpt, tmp_path, capsys):
    code, _, err = run([a.format(ckpt=ckpt, tmp=tmp_path) for a in argv], capsys)
    assert code == 2 and says in err and "training images" not in err


def test_recommend_with_n_above_the_pool_says_what_fits(ckpt, capsys):
    code, _, err = run(["recommend", "--target", "digits", "--n", "5000", "--source", ckpt], capsys)
    assert code == 2 and "0 are held out" not in err
    assert "leaves no validation images" in err and "use n <= 1011" in err


def test_analyze_csv_on_a_folder_and_a_header_in_the_wrong_case(tmp_path, capsys):
    code, _, err = run(["analyze", "--csv", tmp_path, "--out", tmp_path / "a"], capsys)
    assert code == 2 and "is a folder, not a CSV file" in err and "does not exist" not in err
    (tmp_path / "r.csv").write_text("Source,target, N ,unfrozen_blocks,epochs,seed,test_acc\n"
                                    "natural,digits,10,0,2,0,0.5\n")
    code, _, err = run(["analyze", "--csv", tmp_path / "r.csv", "--out", tmp_path / "a"], capsys)
    assert code == 2 and "rename 'Source' -> 'source', ' N ' -> 'n'" in err


# --- 15: help texts -----------------------------------------------------------------------
def _help(*argv: str) -> str:
    parser = build_parser(list(argv))
    for action in parser._subparsers._group_actions:  # the command's own parser
        sub = action.choices[argv[0]]
    if len(argv) > 1:
        sub = next(a for a in sub._subparsers._group_actions).choices[argv[1]]
    return sub.format_help()


def test_help_texts_say_what_the_readme_says():
    assert "95%%" not in _help("demo") and "95%" in _help("demo")
    assert "tuning" in _help("study", "run")
    pretrain = _help("pretrain")
    assert "folder:PATH" in pretrain and "imagefolder:" not in pretrain
    assert "held out of the training pool" in _help("recommend")
    assert "eval" not in _help("completion")  # building the script takes seconds: save it once


def test_list_models_lists_timm_names():
    import robust_transfer as rt

    names = rt.list_models("timm:convnext_a*")
    assert "timm:convnext_atto" in names and all(n.startswith("timm:convnext_a") for n in names)
    assert rt.list_models("timm:*", kind="embedded") == []


# --- 6: resources bounded by the machine ------------------------------------------------
def test_resources_beyond_the_machine_are_refused_unless_asked_for():
    two = Machine(cores=2, gpus=0)
    check_resources(2, 0, 1, machine=two)
    check_resources(1, 0, 2, machine=two)
    with pytest.raises(ConfigError, match="more than this machine's 2 core"):
        check_resources(1, 0, 3, machine=two)
    check_resources(4, 0, 1, oversubscribe=True, machine=two)  # on purpose
    with pytest.raises(ConfigError, match="even oversubscribed"):
        check_resources(2 * MAX_THREADS_PER_CORE + 1, 0, 1, oversubscribe=True, machine=two)
    with pytest.raises(ConfigError, match="sees no CUDA GPU"):
        check_resources(1, 0.25, 1, machine=two)
    with pytest.raises(ConfigError, match="more than the 1 GPU"):
        check_resources(1, 0.5, 4, machine=Machine(8, 1))
    check_resources(1, 0.25, 4, machine=Machine(8, 1))


# --- 8: non-finite runs -----------------------------------------------------------------
def test_a_diverging_fit_fails_with_its_reason(digits_train, digits_policy):
    from robust_transfer.engine.training import FitOptions, OptimConfig, TensorLoader, fit

    torch.manual_seed(0)
    model = build_architecture("small_resnet", 10, input_size=16)
    loader = TensorLoader(digits_train.images[:64], digits_train.labels[:64], 32,
                          transform=digits_policy.prepare)
    with pytest.raises(NonFiniteError, match="train_loss is nan at epoch 1"):
        fit(model, loader, None, FitOptions(epochs=2, optim=OptimConfig(lr=1e30)))


def test_a_diverging_study_run_is_failed_not_finished(tmp_path, ckpt):
    from robust_transfer.study import run_study
    from robust_transfer.study.store import StudyStore

    spec = tmp_path / "s.yaml"
    spec.write_text(textwrap.dedent(f"""\
        sources: [{{model: {ckpt}, label: natural, eps: 0, norm: none}}]
        targets: [digits]
        train_images: [20]
        epochs: 1
        recipe: {{lr: 1.0e+30, batch_size: 10}}
        """))
    summary = run_study(spec, tmp_path / "st")
    assert summary.finished == 0 and summary.failed == 1
    assert "is nan at epoch 1" in summary.failures[0][1]
    assert "training diverged; lower the learning rate" in summary.failures[0][1]
    with StudyStore(tmp_path / "st", readonly=True) as store:
        assert store.status().finished == 0


# --- 10: the cost model counts the robust evaluation -------------------------------------
def test_the_cost_of_a_run_includes_its_pgd_steps():
    from dataclasses import replace

    from robust_transfer.study.cost import RunShape, count_flops, run_work

    shape = RunShape("small_resnet", 28, 0, n=50, epochs=15, evals=15, test=449, augmented=False)
    plain, robust = run_work(shape), run_work(replace(shape, robust_images=200, robust_steps=20))
    whole = count_flops("small_resnet", 28, "all").suffix_forward
    assert robust.flops - plain.flops == pytest.approx(200 * 20 * 2 * whole + 200 * whole)
    assert robust.flops > 5 * plain.flops  # the tuning preset's runs: mostly the attack


def test_dry_run_of_the_tuning_preset_counts_its_robust_evaluation(tmp_path):
    from robust_transfer.study import plan_study
    from robust_transfer.study.spec import load_spec

    plan = plan_study(load_spec("tuning"), tmp_path / "t", False, None)
    cost = plan.estimate.cost
    assert cost.cached.robust_attack > 0 and cost.cached.robust_attack > cost.cached.train_step


# --- 11: interrupted commands leave nothing ------------------------------------------------
def test_staged_dir_is_whole_or_absent(tmp_path):
    out = tmp_path / "sub" / "out"
    with pytest.raises(KeyboardInterrupt), staged_dir(out) as stage:
        (stage / "half.npz").write_bytes(b"x")
        raise KeyboardInterrupt
    assert not out.exists() and list((tmp_path / "sub").iterdir()) == []
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    (out / "summary.json").write_text("old")
    with staged_dir(out) as stage:
        (stage / "summary.json").write_text("new")
        (stage / "m").mkdir()
        (stage / "m" / "a.npz").write_bytes(b"a")
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt", "m", "summary.json"]
    assert (out / "summary.json").read_text() == "new" and (out / "keep.txt").read_text() == "mine"
    assert [p.name for p in tmp_path.joinpath("sub").iterdir()] == ["out"]


@pytest.mark.parametrize("command", ["influence", "saliency"])
def test_ctrl_c_in_influence_and_saliency_leaves_no_folder(command, ckpt, tmp_path, capsys,
                                                           monkeypatch):
    import robust_transfer.influence.outputs as inf_out
    import robust_transfer.saliency as sal

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(inf_out, "write_influence" if command == "influence" else "x",
                        interrupted, raising=False)
    monkeypatch.setattr(sal, "plot_saliency" if command == "saliency" else "x", interrupted,
                        raising=False)
    extra = ["--n", "50", "--test-n", "20"] if command == "influence" else ["--count", "2"]
    code, _, err = run([command, "-c", ckpt, "--dataset", "digits", *extra, "--out",
                        tmp_path / "o"], capsys)
    assert code == 130 and "interrupted" in err
    assert list(tmp_path.iterdir()) == []  # no folder, no staging left behind
    code, _, _ = run([command, "-c", ckpt, "--dataset", "digits", *extra, "--out",
                      tmp_path / "o"], capsys)
    assert code == 130  # a rerun is not refused for an existing folder


def test_sigterm_in_finetune_says_so_and_leaves_no_metrics(ckpt, tmp_path, capsys, monkeypatch):
    import robust_transfer.engine.transfer as transfer

    def terminated(*args, callback=None, **kwargs):
        callback("epoch", {"epoch": 1, "lr": 0.1, "train_loss": 1.0, "train_acc": 0.5})
        assert [p.name for p in tmp_path.iterdir()] == [".m.metrics.csv.partial"]
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not stop the command")

    monkeypatch.setattr(transfer, "finetune", terminated)
    code, _, err = run(["finetune", ckpt, "--target", "digits", "--epochs", "1", "--out",
                        tmp_path / "m"], capsys)
    assert code == 128 + signal.SIGTERM
    assert err.splitlines()[-1].startswith("terminated (SIGTERM): stopped")
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored


# --- 15: a finished study leaves no driver files; export writes plain values --------------
def test_a_finished_study_removes_its_driver_files_and_exports_auto_plainly(tmp_path, ckpt):
    from robust_transfer.study import run_study
    from robust_transfer.study.store import export_results

    spec = tmp_path / "s.yaml"
    spec.write_text(f"sources: [{{model: {ckpt}, label: natural, eps: 0, norm: none}}]\n"
                    "targets: [digits]\ntrain_images: [30]\nepochs: 1\n")
    run_study(spec, tmp_path / "st", run_fn=_instant_run)
    left = {p.name for p in (tmp_path / "st").iterdir()}
    assert not left & {"driver.pid", "driver.lock"}, left
    runs_csv = export_results(tmp_path / "st", "csv")[0].read_text()
    assert '"""auto"""' not in runs_csv and ",auto," in runs_csv
    run_study(spec, tmp_path / "st", run_fn=_instant_run)  # a second driver takes the lock


def test_nan_loss_is_not_mistaken_for_an_unevaluated_epoch():
    from robust_transfer.engine.training import EpochMetrics, require_finite_metrics

    require_finite_metrics(EpochMetrics(1, 0.1, 0.5, 0.5), evaluated=False)  # NaN: not measured
    with pytest.raises(NonFiniteError, match="test_loss is nan"):  # measured, and NaN
        require_finite_metrics(EpochMetrics(1, 0.1, 0.5, 0.5), evaluated=True)
    require_finite_metrics(EpochMetrics(1, 0.1, 0.5, 0.5, 0.4, 0.9))
    with pytest.raises(NonFiniteError, match="test_loss is inf"):
        require_finite_metrics(EpochMetrics(1, 0.1, 0.5, 0.5, math.inf, 0.1))


def _instant_run(task, ctx):
    from robust_transfer.study.store import RunOutcome

    history = ({"epoch": 1, "lr": 0.1, "train_loss": 1.0, "train_acc": 0.5, "test_loss": 1.0,
                "test_acc": 0.5},)
    return RunOutcome(task.run_id, "finished", 0.0, 1.0, n=30, history=history)


# --- 15: --help answers without torch ------------------------------------------------------
# influence's parser still reads its solver registry and InfluenceConfig, which import torch
NOT_YET_LIGHT = {"influence"}


def test_subcommand_help_does_not_import_torch():
    """One fresh interpreter asks every other subcommand for --help, checking torch each time."""
    import subprocess
    import sys

    from robust_transfer.cli.common import COMMANDS

    commands = [[c] for c in COMMANDS if c not in NOT_YET_LIGHT] + [
        ["study", s] for s in ("run", "status", "runs", "show", "export", "repair", "presets")]
    code = textwrap.dedent(f"""\
        import contextlib, io, sys
        from robust_transfer.cli import main
        for argv in {commands!r}:
            with contextlib.redirect_stdout(io.StringIO()):
                try:
                    main([*argv, "--help"])
                except SystemExit:
                    pass
            if "torch" in sys.modules:
                sys.exit("torch imported by: " + " ".join(argv) + " --help")
        """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_parsers_arch_names_are_the_registrys():
    from robust_transfer.cli.train import ARCH_NAMES
    from robust_transfer.models.arch import ARCHS

    assert list(ARCH_NAMES) == ARCHS.names()


# --- 15: an offline hub fails in one line and leaves no litter -----------------------------
def test_an_unreachable_hub_fails_at_once_without_retries_or_litter(tmp_path, monkeypatch, caplog):
    import time

    from huggingface_hub import constants, hf_hub_download

    import robust_transfer.hub as hub

    monkeypatch.setattr(hub, "hub_unreachable", lambda endpoint=None: "no route")
    cache = tmp_path / "hf"
    start = time.perf_counter()
    with pytest.raises(ConnectionError, match="cannot be reached from this machine") as err, \
            hub.quiet_hub(cache):
        hf_hub_download("timm/convnext_atto.d2_in1k", "model.safetensors", cache_dir=cache)
    assert time.perf_counter() - start < 5  # no retries with back-off
    assert err.value.__suppress_context__ and "Retrying" not in caplog.text
    assert not cache.exists() or list(cache.rglob("*")) == []
    assert constants.HF_HUB_OFFLINE is False  # restored
    assert hub._reason(err.value).startswith("ConnectionError: the Hugging Face hub")
