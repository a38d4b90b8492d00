"""scripts/gpu_check.py: refuses without a GPU; every part runs in --cpu-smoke mode."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_refuses_without_a_gpu_in_one_line(gpu_check, tmp_path, capsys):
    out = tmp_path / "figures.json"
    assert gpu_check.main(["--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no CUDA GPU") and "\n" not in err
    assert not out.exists()


def test_unknown_part_is_refused(gpu_check, tmp_path, capsys):
    assert gpu_check.main(["--cpu-smoke", "--parts", "finetune,warp", "--out", str(tmp_path / "f.json")]) == 2
    assert "unknown part(s) warp" in capsys.readouterr().err


def _smoke(gpu_check, tmp_path, parts: str, *extra: str) -> dict:
    out = tmp_path / "figures.json"
    assert gpu_check.main(["--cpu-smoke", "--parts", parts, "--out", str(out), *extra]) == 0
    report = json.loads(out.read_text())
    assert report["mode"] == "cpu-smoke" and not report["errors"]
    assert set(report["parts"]) == set(parts.split(","))
    return report["parts"]


def test_cpu_smoke_in_process_parts(gpu_check, tmp_path):
    parts = _smoke(gpu_check, tmp_path, "finetune,pgd,cache,influence")
    assert parts["finetune"]["images_per_s"] > 0 and parts["finetune"]["autocast"] == "none"
    pgd = parts["pgd"]
    assert 0 <= pgd["ours_success"] <= 1 and 0 <= pgd["torchattacks_success"] <= 1
    assert pgd["ours_seconds"] > 0 and pgd["torchattacks_seconds"] > 0
    cache = parts["cache"]
    assert cache["cached_used_cache"] and not cache["uncached_used_cache"]
    # the same run with and without the prefix cache: same accuracy on the CPU in float32
    assert cache["cached_test_acc"] == pytest.approx(cache["uncached_test_acc"], abs=0.051)
    inf = parts["influence"]
    assert inf["scores_finite"] and inf["scores_shape"] == [10, 30]


def test_cpu_smoke_input_and_paper_code_parts(gpu_check, tmp_path):
    parts = _smoke(gpu_check, tmp_path, "input,paper_code")
    inp = parts["input"]
    assert inp["placement"] == "device" and inp["augment"] and inp["input_images_per_s"] > 0
    for key in ("unfrozen_3", "unfrozen_all"):
        rates = inp[key]
        assert rates["model_images_per_s"] > 0 and rates["step_images_per_s"] > 0
        assert 0 <= rates["input_share_of_step"] < 1
    paper = parts["paper_code"]
    assert paper["ours_seconds"] > 0 and paper["paper_seconds"] > 0
    assert 0 <= paper["ours_test_acc"] <= 1 and 0 <= paper["paper_test_acc"] <= 1
    # smoke: 2 epochs, log_iters 1: ours after epochs 1 and 2, the paper's at indices 0 and 1
    assert paper["ours_evaluations"] == paper["paper_evaluations"] == 2


def test_parts_past_max_seconds_are_skipped_and_recorded(gpu_check, tmp_path):
    out = tmp_path / "figures.json"
    assert gpu_check.main(["--cpu-smoke", "--parts", "input,pgd", "--max-seconds", "0",
                           "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["skipped"] == ["input", "pgd"] and report["parts"] == {}


@pytest.mark.slow
def test_cpu_smoke_ray_and_torchrun_parts(gpu_check, tmp_path):
    parts = _smoke(gpu_check, tmp_path, "ray,pretrain")
    assert parts["ray"]["sequential_finished"] == parts["ray"]["ray_finished"] == 4
    assert parts["pretrain"]["backend"] == "gloo" and parts["pretrain"]["arch"] == "small_resnet"
