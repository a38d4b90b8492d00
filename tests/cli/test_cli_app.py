"""The command-line app: light start-up, the command table, suggestions, completion, run queries."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from robust_transfer.cli import build_parser, main
from robust_transfer.cli.common import COMMANDS
from robust_transfer.study.runner import run_study
from robust_transfer.study.store import RunOutcome

REPO = Path(__file__).resolve().parents[2]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_the_command_table_matches_what_each_module_registers():
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {a.dest: a.help for a in action._choices_actions}
    assert list(action.choices) == list(COMMANDS)
    assert helps == {name: c.help for name, c in COMMANDS.items()}


def _imports_torch(*argv: str) -> tuple[bool, str]:
    code = ("import sys; sys.argv = ['robust-transfer', *sys.argv[1:]]\n"
            "from robust_transfer.cli import main\n"
            "code = main(sys.argv[1:])\n"
            "print('TORCH', 'torch' in sys.modules, code)")
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True)
    return out.stdout.strip().endswith("TORCH True 0"), out.stdout


@pytest.mark.parametrize("argv", [["zoo", "list"], ["zoo", "list", "--kind", "torchvision"]])
def test_light_commands_do_not_import_torch(argv):
    loaded, out = _imports_torch(*argv)
    assert "TORCH False 0" in out, out


def test_help_and_version_do_not_import_torch():
    for flag in ("--help", "--version"):
        code = ("import sys\nfrom robust_transfer.cli import main\ntry:\n    main([sys.argv[1]])\n"
                "except SystemExit:\n    pass\nprint('TORCH', 'torch' in sys.modules)")
        out = subprocess.run([sys.executable, "-c", code, flag], capture_output=True, text=True)
        assert out.stdout.strip().endswith("TORCH False"), out.stdout


def test_unknown_commands_get_suggestions(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["finetun"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "(did you mean 'finetune'?)" in err and err.count("\n") == 1


def test_completion_script_is_valid_bash(capsys):
    assert main(["completion", "bash"]) == 0
    script = capsys.readouterr().out
    assert "complete -o default" in script and "fmnist-natural" in script and "--unfrozen-blocks" in script
    if shutil.which("bash"):
        subprocess.run(["bash", "-n"], input=script, text=True, check=True)


# --- study runs / show ---------------------------------------------------------------
def instant_run(task, ctx):
    """Finished at once; the natural source's n=25 seed-0 runs fail (to show errors)."""
    now = time.time()
    if task.config.source == "natural" and task.config.n == 25 and task.config.seed == 0:
        return RunOutcome(task.run_id, "failed", now, now, error="RuntimeError: simulated")
    history = tuple({"epoch": e, "lr": 0.1, "train_loss": 1.0, "train_acc": 0.5,
                     "test_loss": 1.0, "test_acc": 0.25 * e} for e in (1, 2))
    return RunOutcome(task.run_id, "finished", now, now, n=task.config.n or 1348, history=history)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("q") / "study"
    run_study(REPO / "studies" / "embedded.yaml", out, run_fn=instant_run)
    return out


def test_study_runs_filters_by_what_produced_them(study, capsys):
    assert main(["study", "runs", str(study), "--where", "source=natural", "n=200", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 2 * 3  # unfrozen 0 and 1, three seeds
    assert {(r["source"], r["n_label"]) for r in rows} == {("natural", "200")}
    assert {r["unfrozen_blocks"] for r in rows} == {"0", "1"}
    assert main(["study", "runs", str(study), "--where", "status=failed"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["RUN_ID", "STATUS", "SOURCE"] and len(lines) == 1 + 2
    assert main(["study", "runs", str(study), "--where", "sorce=natural"]) == 2
    assert "did you mean 'source'?" in capsys.readouterr().err


def test_study_show_prints_config_results_epochs_and_errors(study, capsys):
    main(["study", "runs", str(study), "--where", "status=failed", "seed=0", "--json"])
    failed = json.loads(capsys.readouterr().out.splitlines()[0])["run_id"]
    assert main(["study", "show", str(study), failed[:8]]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"run {failed}: failed") and "RuntimeError: simulated" in out
    main(["study", "runs", str(study), "--where", "status=finished", "--json"])
    done = json.loads(capsys.readouterr().out.splitlines()[0])["run_id"]
    assert main(["study", "show", str(study), done, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["run"]["config"]["kind"] == "finetune/v1" and len(info["epochs"]) == 2
    assert info["source"]["sha256"] and info["run"]["test_acc"] == 0.5
    assert main(["study", "show", str(study), "0"]) == 2  # ambiguous or absent: one line
    assert capsys.readouterr().err.count("\n") == 1


def test_study_status_of_a_store_does_not_import_torch(study):
    loaded, out = _imports_torch("study", "status", str(study))
    assert "TORCH False 0" in out, out
