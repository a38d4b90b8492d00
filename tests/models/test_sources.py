"""The one source resolver: records, checked loading, torchvision weights offline, timm names."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
from pathlib import Path

import pytest
import torch
from torchvision.models import resnet50

from robust_transfer.cli import main
from robust_transfer.errors import CheckpointError, ConfigError, UnknownNameError
from robust_transfer.models import build_architecture, zoo
from robust_transfer.models.base import IMAGENET_MEAN, IMAGENET_STD
from robust_transfer.models.checkpoints import save_model
from robust_transfer.models.sources import (
    SourceMissingError,
    SourceRecord,
    load_source,
    resolve_source,
)
from robust_transfer.registry import Registry


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Empty zoo cache, empty embedded zoo, torch hub's cache under tmp_path."""
    monkeypatch.setenv(zoo.ZOO_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(zoo, "EMBEDDED_DIR", tmp_path / "embedded")


def _save(path: Path, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_architecture("small_resnet", 10, mean=(0.3,) * 3, std=(0.35,) * 3, input_size=16).eval()
    save_model(model, path, {"training": "pgd", "norm": "linf", "eps": 0.1, "source_dataset": "digits"})
    return model


def test_record_of_our_checkpoint_and_a_checked_load(tmp_path):
    model = _save(tmp_path / "m")
    record = resolve_source(tmp_path / "m.safetensors")
    assert isinstance(record, SourceRecord)
    assert (record.kind, record.arch, record.norm, record.eps, record.input_size, record.num_classes) == \
        ("checkpoint", "small_resnet", "linf", 0.1, 16, 10)
    assert record.sha256 == hashlib.sha256((tmp_path / "m.safetensors").read_bytes()).hexdigest()
    loaded = load_source(record)
    assert loaded.source_record == record and not loaded.training
    x = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_truncated_or_changed_weights_are_refused_in_one_line(tmp_path):
    _save(tmp_path / "m")
    record = resolve_source(tmp_path / "m")
    weights = tmp_path / "m.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="does not match the sha256") as err:
        load_source(record)
    assert "\n" not in str(err.value)
    _save(tmp_path / "m2", seed=1)  # a valid checkpoint, but not the weights the record pinned
    for suffix in (".safetensors", ".json"):
        (tmp_path / f"m{suffix}").write_bytes((tmp_path / f"m2{suffix}").read_bytes())
    with pytest.raises(CheckpointError, match="changed: its sha256"):
        load_source(record)


def test_unknown_names_suggest_and_missing_paths_say_so(tmp_path):
    with pytest.raises(UnknownNameError, match=r"did you mean 'resnet50-l2-eps3'"):
        resolve_source("resnet50-l2-eps33")
    with pytest.raises(SourceMissingError, match="gone.pt does not exist") as err:
        resolve_source(tmp_path / "gone.pt")
    assert err.value.record is None


def test_published_source_not_local_is_missing_with_what_is_known():
    with pytest.raises(SourceMissingError, match="zoo fetch resnet50-l2-eps3 --download") as err:
        resolve_source("resnet50-l2-eps3")
    known = err.value.record
    assert (known.kind, known.arch, known.norm, known.eps, known.path) == ("published", "resnet50", "l2", 3.0, None)


# --- torchvision's ImageNet ResNet-50, offline -------------------------------------------
def _torchvision_file(folder: Path) -> tuple[torch.nn.Module, Path]:
    """A torchvision ResNet-50 state dict saved as torch hub saves downloads, and its sha256."""
    torch.manual_seed(0)
    net = resnet50().eval()
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "tmp.pth"
    torch.save(net.state_dict(), tmp)
    return net, tmp


def test_torch_hub_folder_is_torchvisions():
    assert zoo.torch_hub_checkpoints() == Path(torch.hub.get_dir()) / "checkpoints"


def test_torchvision_resnet50_is_offline_until_asked(capsys):
    with pytest.raises(SourceMissingError, match="--download") as err:
        resolve_source("torchvision-resnet50")
    assert err.value.record.kind == "torchvision" and err.value.record.norm == "none"
    assert main(["zoo", "fetch", "torchvision-resnet50"]) == 2
    message = capsys.readouterr().err
    assert "resnet50-0676ba61.pth is not in" in message and "--download" in message
    assert message.count("\n") == 1
    row = next(r for r in zoo.zoo_listing() if r["name"] == "torchvision-resnet50")
    assert (row["kind"], row["arch"], row["local"]) == ("torchvision", "resnet50", False)


def test_torchvision_resnet50_loads_from_torch_hubs_cache(monkeypatch):
    entry = zoo.TORCHVISION.get("torchvision-resnet50")
    net, tmp = _torchvision_file(zoo.torch_hub_checkpoints())
    # a file under the real name whose sha256 does not start with 0676ba61 is not the real file
    tmp.rename(zoo.torch_hub_checkpoints() / entry.file)
    record = resolve_source("torchvision-resnet50")
    assert record.path == zoo.torch_hub_checkpoints() / entry.file
    with pytest.raises(CheckpointError, match="promises 0676ba61"):
        load_source(record)
    # the same bytes under a name carrying their own sha256 prefix, as torch hub names files
    prefix = hashlib.sha256(record.path.read_bytes()).hexdigest()[:8]
    named = dataclasses.replace(entry, file=f"resnet50-{prefix}.pth")
    record.path.rename(zoo.torch_hub_checkpoints() / named.file)
    registry: Registry[zoo.TorchvisionModel] = Registry("torchvision zoo model")
    registry.register(named.name, named)
    monkeypatch.setattr(zoo, "TORCHVISION", registry)
    assert zoo.fetch("torchvision-resnet50") == zoo.torch_hub_checkpoints() / named.file
    model = load_source("torchvision-resnet50")
    assert (model.arch, model.num_classes, model.input_size) == ("resnet50", 1000, 224)
    x = torch.rand(2, 3, 64, 64)
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(x), net((x - mean) / std))


# --- timm names --------------------------------------------------------------------------
def test_timm_names_go_through_the_timm_backbone():
    if importlib.util.find_spec("robust_transfer.models.timm_backbone") is None:
        pytest.skip("robust_transfer.models.timm_backbone is not in this branch")
    pytest.importorskip("timm")
    record = resolve_source("timm:resnet10t")
    assert record.kind == "timm" and record.path is None and record.arch == "timm:resnet10t"
    with pytest.raises(UnknownNameError, match="timm"):
        resolve_source("timm:resnet10tt")


def test_timm_without_the_backbone_is_one_clear_error(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_backbone(name, *args, **kwargs):
        if name == "robust_transfer.models.timm_backbone":
            raise ImportError("No module named 'robust_transfer.models.timm_backbone'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_backbone)
    with pytest.raises(ConfigError, match="timm sources need") as err:
        resolve_source("timm:resnet10t")
    assert "\n" not in str(err.value)
