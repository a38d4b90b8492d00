"""Checkpoints: robustness-library and torchvision files, our safetensors format, bad files."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.models import resnet18

from robust_transfer.errors import CheckpointError, OutputExistsError
from robust_transfer.models import IMAGENET_MEAN, IMAGENET_STD, build_architecture
from robust_transfer.models.checkpoints import (
    checkpoint_paths,
    infer_arch,
    load_model,
    read_metadata,
    save_model,
    split_state_dict,
)

MEAN = torch.tensor([0.30, 0.40, 0.50]).view(3, 1, 1)  # deliberately not ImageNet's
STD = torch.tensor([0.20, 0.25, 0.30]).view(3, 1, 1)


def _randomize_bn(net: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial BatchNorm statistics, so that eval-mode outputs depend on them."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.num_batches_tracked.fill_(7)


@pytest.fixture(scope="module")
def tv_net() -> torch.nn.Module:
    torch.manual_seed(0)
    net = resnet18(num_classes=1000)
    _randomize_bn(net)
    return net.eval()


def robustness_state(net: torch.nn.Module, prefix: str = "module.") -> dict[str, torch.Tensor]:
    """The state dict of ``DataParallel(AttackerModel(net))`` as the robustness library saves it.

    The attacker's copy gets different values, so a loader that used it would be caught.
    """
    state = {f"{prefix}normalizer.new_mean": MEAN.clone(), f"{prefix}normalizer.new_std": STD.clone()}
    for key, value in net.state_dict().items():
        state[f"{prefix}model.{key}"] = value.clone()
        state[f"{prefix}attacker.model.{key}"] = torch.zeros_like(value)
    state[f"{prefix}attacker.normalize.new_mean"] = torch.zeros(3, 1, 1)
    state[f"{prefix}attacker.normalize.new_std"] = torch.ones(3, 1, 1)
    return state


def robustness_file(path: Path, net: torch.nn.Module, key: str = "model") -> Path:
    torch.save({key: robustness_state(net), "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]},
                "schedule": None, "epoch": 90, "nat_prec1": np.float64(57.9),
                "adv_prec1": torch.tensor(35.2)}, path)
    return path


def _x() -> torch.Tensor:
    return torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


# --- robustness library ----------------------------------------------------------------
def test_robustness_file_equals_torchvision_behind_its_normalizer(tmp_path, tv_net):
    model, meta = load_model(robustness_file(tmp_path / "r18.ckpt", tv_net))
    x = _x()
    with torch.no_grad():
        assert torch.equal(model(x), tv_net((x - MEAN) / STD))
    assert not model.training
    assert torch.equal(model.normalizer.mean, MEAN) and torch.equal(model.normalizer.std, STD)
    assert (meta["format"], meta["arch"], meta["num_classes"]) == ("robustness", "resnet18", 1000)
    assert meta["epoch"] == 90 and meta["nat_prec1"] == pytest.approx(57.9)
    assert meta["adv_prec1"] == pytest.approx(35.2)


def test_legacy_state_dict_key_without_dataparallel_or_batch_counters(tmp_path, tv_net):
    state = {k: v for k, v in robustness_state(tv_net, prefix="").items()
             if not k.endswith("num_batches_tracked")}  # files from before torch 0.4.1
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "legacy.pt")
    model, meta = load_model(tmp_path / "legacy.pt", arch="resnet18", num_classes=1000)
    x = _x()
    with torch.no_grad():
        assert torch.equal(model(x), tv_net((x - MEAN) / STD))
    assert meta["epoch"] == 3


def test_plain_torchvision_state_dict_gets_imagenet_normalizer(tmp_path, tv_net):
    torch.save(tv_net.state_dict(), tmp_path / "tv.pth")
    model, meta = load_model(tmp_path / "tv.pth")
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    x = _x()
    with torch.no_grad():
        assert torch.equal(model(x), tv_net((x - mean) / std))
    assert meta["format"] == "torchvision"


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "wide_resnet50_2", "small_resnet"])
def test_keys_map_onto_every_architecture(arch):
    # on the meta device: key names and shapes only, no weights allocated
    with torch.device("meta"):
        net = build_architecture(arch).net
    net_state, mean, std, fmt = split_state_dict(robustness_state(net))
    assert fmt == "robustness" and infer_arch(net_state) == arch
    assert mean == pytest.approx(MEAN.flatten().tolist()) and std == pytest.approx(STD.flatten().tolist())
    expected = net.state_dict()
    assert net_state.keys() == expected.keys()
    assert all(net_state[k].shape == expected[k].shape for k in expected)


# --- our format ------------------------------------------------------------------------
def _small_model() -> torch.nn.Module:
    torch.manual_seed(3)
    model = build_architecture("small_resnet", 10, mean=(0.286,) * 3, std=(0.353,) * 3)
    _randomize_bn(model.net, seed=3)
    return model.eval()


METADATA = {"source_dataset": "fmnist", "training": "pgd", "norm": "l2", "eps": 0.5,
            "attack_steps": 7, "attack_step_size": 0.1, "epochs": 3, "clean_acc": 0.81,
            "robust_acc": 0.6, "command": "robust-transfer pretrain --eps 0.5"}


def test_our_format_round_trip_is_bit_identical(tmp_path):
    model = _small_model()
    weights = save_model(model, tmp_path / "zoo" / "tiny", METADATA)
    assert weights == tmp_path / "zoo" / "tiny.safetensors"
    assert sorted(p.name for p in weights.parent.iterdir()) == ["tiny.json", "tiny.safetensors"]
    loaded, meta = load_model(tmp_path / "zoo" / "tiny")
    x = torch.rand(4, 3, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert {k: meta[k] for k in METADATA} == METADATA
    assert (meta["arch"], meta["num_classes"], meta["input_size"]) == ("small_resnet", 10, 28)
    assert len(meta["sha256"]) == 64 and meta == read_metadata(weights)
    # every spelling of the path finds the same checkpoint
    assert load_model(weights)[1] == load_model(weights.with_suffix(".json"))[1] == meta


def test_save_refuses_an_existing_path_unless_told(tmp_path):
    model = _small_model()
    save_model(model, tmp_path / "m", METADATA)
    with pytest.raises(OutputExistsError) as err:
        save_model(model, tmp_path / "m.safetensors", METADATA)
    assert "overwrite" in _one_line(err)
    save_model(model, tmp_path / "m", {**METADATA, "epochs": 4}, overwrite=True)
    assert read_metadata(tmp_path / "m")["epochs"] == 4


def test_sha256_mismatch_is_refused(tmp_path):
    weights = save_model(_small_model(), tmp_path / "m", METADATA)
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256") as err:
        load_model(weights)
    _one_line(err)


def test_missing_metadata_or_mismatched_request_is_refused(tmp_path):
    weights, meta_path = checkpoint_paths(tmp_path / "m")
    save_model(_small_model(), tmp_path / "m", METADATA)
    with pytest.raises(CheckpointError, match="not the requested resnet18"):
        load_model(weights, arch="resnet18")
    meta_path.write_text(json.dumps({"format": "robust_transfer"}))
    with pytest.raises(CheckpointError, match="lacks"):
        load_model(weights)
    meta_path.unlink()
    with pytest.raises(CheckpointError, match="m.json is missing") as err:
        load_model(weights)
    _one_line(err)


# --- bad files -------------------------------------------------------------------------
def test_truncated_file_is_refused(tmp_path, tv_net):
    path = robustness_file(tmp_path / "r18.ckpt", tv_net)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="corrupt, truncated") as err:
        load_model(path)
    _one_line(err)


@pytest.mark.parametrize("content", [np.random.default_rng(0).bytes(4096), b"", b"not a checkpoint\n"])
def test_random_bytes_are_refused(tmp_path, content):
    (tmp_path / "junk.pt").write_bytes(content)
    with pytest.raises(CheckpointError, match="cannot read") as err:
        load_model(tmp_path / "junk.pt")
    _one_line(err)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_model(tmp_path / "absent.ckpt")


def test_non_state_dict_is_refused(tmp_path):
    torch.save({"model": [1, 2, 3], "epoch": 1}, tmp_path / "odd.pt")
    with pytest.raises(CheckpointError, match="holds no state dict"):
        load_model(tmp_path / "odd.pt")


def test_missing_and_unexpected_keys_are_named(tmp_path, tv_net):
    state = robustness_state(tv_net)
    del state["module.model.layer4.1.bn2.weight"]
    state["module.model.extra.weight"] = torch.zeros(1)
    torch.save({"model": state}, tmp_path / "bad.ckpt")
    with pytest.raises(CheckpointError) as err:
        load_model(tmp_path / "bad.ckpt")
    message = _one_line(err)
    assert "missing 1 key(s) (layer4.1.bn2.weight)" in message
    assert "unexpected 1 key(s) (extra.weight)" in message


def test_wrong_architecture_is_explained(tmp_path, tv_net):
    path = robustness_file(tmp_path / "r18.ckpt", tv_net)
    with pytest.raises(CheckpointError, match="does not fit resnet50") as err:
        load_model(path, arch="resnet50")
    message = _one_line(err)
    assert "missing" in message and "more" in message  # long key lists are abbreviated
    with pytest.raises(CheckpointError, match=r"wrong shape 2 key\(s\) \(fc.bias"):
        load_model(path, num_classes=10)


class _Payload:
    """Unpickling this would create a marker file: the loader must refuse, not run it."""

    marker: Path

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("writer", ["torch", "pickle"])
def test_pickled_objects_are_refused_not_executed(tmp_path, writer):
    payload = _Payload()
    payload.marker = tmp_path / "executed"
    path = tmp_path / "evil.pt"
    if writer == "torch":
        torch.save({"model": {"w": torch.zeros(1)}, "extra": payload}, path)
    else:
        path.write_bytes(pickle.dumps({"model": payload}))
    with pytest.raises(CheckpointError, match="could run code") as err:
        load_model(path)
    _one_line(err)
    assert not payload.marker.exists()
