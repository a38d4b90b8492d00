"""The model zoo: published listing, fetching (local HTTP only), embedded models, the CLI."""

from __future__ import annotations

import argparse
import hashlib
import socket
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from torchvision.models import resnet18

from robust_transfer.cli import build_parser, main
from robust_transfer.errors import CheckpointError, UnknownNameError
from robust_transfer.models import build_architecture, zoo
from robust_transfer.models.checkpoints import save_model
from robust_transfer.models.sources import load_source, resolve_source
from robust_transfer.registry import Registry


@pytest.fixture(autouse=True)
def isolated_zoo(tmp_path, monkeypatch):
    """Every test gets an empty cache folder and an empty embedded zoo."""
    monkeypatch.setenv(zoo.ZOO_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(zoo, "EMBEDDED_DIR", tmp_path / "embedded")


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def http_dir(tmp_path):
    """A folder served on 127.0.0.1; yields (folder, base URL)."""
    folder = tmp_path / "served"
    folder.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _only_entry(monkeypatch, url: str, sha256: str | None) -> zoo.PublishedModel:
    entry = zoo.PublishedModel("test-l2-eps3", "resnet18", "l2", 3.0, "3", "test_l2_eps3.ckpt",
                               url, "https://example.invalid/page", sha256=sha256)
    registry: Registry[zoo.PublishedModel] = Registry("published zoo model")
    registry.register(entry.name, entry)
    monkeypatch.setattr(zoo, "PUBLISHED", registry)
    return entry


def _embed(name: str = "tiny-l2-eps0.5") -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_architecture("small_resnet", 10, mean=(0.286,) * 3, std=(0.353,) * 3).eval()
    save_model(model, zoo.EMBEDDED_DIR / name,
               {"source_dataset": "fmnist", "training": "pgd", "norm": "l2", "eps": 0.5,
                "clean_acc": 0.8, "robust_acc": 0.6, "command": "robust-transfer pretrain ..."})
    return model


# --- the published listing -------------------------------------------------------------
def test_published_grid_and_paper_models_are_listed():
    names = zoo.PUBLISHED.names()
    assert len(names) == 3 * (10 + 5) + 3 + 10  # + the ConvNeXt/Swin/ViT entries (zoo_timm)
    l2 = zoo.get_published("resnet50-l2-eps3")
    assert (l2.arch, l2.norm, l2.eps, l2.file) == ("resnet50", "l2", 3.0, "resnet50_l2_eps3.ckpt")
    linf = zoo.get_published("wide_resnet50_2-linf-eps4")
    assert (linf.eps, linf.eps_label, linf.file) == (4 / 255, "4/255", "wide_resnet50_2_linf_eps4.0.ckpt")
    paper = {zoo.get_published(n).file for n in names if n.startswith("robustness-")}
    assert paper == {"imagenet_l2_3_0.pt", "imagenet_linf_4.pt", "imagenet_linf_8.pt"}
    for name in names:
        entry = zoo.get_published(name)
        on_drive = entry.url.startswith("https://drive.usercontent.google.com/")  # by file id
        assert entry.url.startswith("https://") and (on_drive or entry.url.split("?")[0].endswith(entry.file))
        assert 0 < entry.clean_acc < 1


def test_unknown_name_lists_the_zoo():
    with pytest.raises(UnknownNameError, match="valid: .*resnet50-l2-eps3"):
        zoo.fetch("resnet51-l2-eps3")


# --- fetching --------------------------------------------------------------------------
def test_fetch_finds_a_local_file_without_downloading():
    target = zoo.zoo_dir() / "resnet50_l2_eps3.ckpt"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"weights")
    assert zoo.fetch("resnet50-l2-eps3") == target


def test_fetch_without_permission_says_where_to_put_the_file():
    with pytest.raises(CheckpointError) as err:
        zoo.fetch("resnet50-linf-eps4")
    message = str(err.value)
    assert "resnet50_linf_eps4.0.ckpt" in message and str(zoo.zoo_dir()) in message
    assert zoo.get_published("resnet50-linf-eps4").url in message and "\n" not in message


def test_download_from_a_local_server_verifies_the_checksum(http_dir, monkeypatch, tmp_path):
    folder, base = http_dir
    data = bytes(range(256)) * 5000
    (folder / "file.ckpt").write_bytes(data)
    entry = _only_entry(monkeypatch, f"{base}/file.ckpt", hashlib.sha256(data).hexdigest())
    path = zoo.fetch(entry.name, dest_dir=tmp_path / "dest", allow_download=True)
    assert path == tmp_path / "dest" / entry.file and path.read_bytes() == data
    # no temporary left (an empty lock file, as filelock leaves them, may stay)
    assert [p.name for p in path.parent.iterdir() if not p.name.endswith(".lock")] == [entry.file]


def test_download_with_a_wrong_checksum_leaves_nothing(http_dir, monkeypatch, tmp_path):
    folder, base = http_dir
    (folder / "file.ckpt").write_bytes(b"tampered")
    entry = _only_entry(monkeypatch, f"{base}/file.ckpt", "0" * 64)
    with pytest.raises(CheckpointError, match="sha256"):
        zoo.fetch(entry.name, dest_dir=tmp_path / "dest", allow_download=True)
    assert [p for p in (tmp_path / "dest").iterdir() if not p.name.endswith(".lock")] == []


@pytest.mark.parametrize("path", ["/missing.ckpt", None])
def test_unreachable_or_missing_url_is_one_clear_error(http_dir, monkeypatch, tmp_path, path):
    url = f"{http_dir[1]}{path}" if path else f"http://127.0.0.1:{_closed_port()}/x.ckpt"
    entry = _only_entry(monkeypatch, url, None)
    with pytest.raises(CheckpointError, match="cannot download") as err:
        zoo.fetch(entry.name, dest_dir=tmp_path / "dest", allow_download=True)
    assert url in str(err.value) and str(tmp_path / "dest") in str(err.value)
    assert [p for p in (tmp_path / "dest").iterdir() if not p.name.endswith(".lock")] == []


# --- embedded models and loading -------------------------------------------------------
def test_no_embedded_folder_means_no_embedded_models():
    assert zoo.embedded_models() == []


def test_embedded_models_are_listed_and_load(tmp_path):
    model = _embed()
    (info,) = zoo.embedded_models()
    assert (info["name"], info["arch"], info["eps"]) == ("tiny-l2-eps0.5", "small_resnet", 0.5)
    loaded = load_source("tiny-l2-eps0.5")
    x = torch.rand(2, 3, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert loaded.source_record.metadata["source_dataset"] == "fmnist"
    row = zoo.zoo_listing()[0]
    assert row["name"] == "tiny-l2-eps0.5" and row["kind"] == "embedded" and row["local"]


def test_resolve_source_accepts_names_and_paths(tmp_path):
    _embed()
    record = resolve_source("tiny-l2-eps0.5")
    assert record.path == zoo.EMBEDDED_DIR / "tiny-l2-eps0.5.safetensors"
    assert (record.kind, record.arch, record.norm, record.eps) == ("embedded", "small_resnet", "l2", 0.5)
    by_path = resolve_source(zoo.EMBEDDED_DIR / "tiny-l2-eps0.5")
    assert (by_path.kind, by_path.path, by_path.sha256) == ("checkpoint", record.path, record.sha256)
    assert load_source(record.path).arch == "small_resnet"
    with pytest.raises(CheckpointError, match="nothing-here does not exist"):
        resolve_source(tmp_path / "nothing-here")
    with pytest.raises(UnknownNameError, match="did you mean 'tiny-l2-eps0.5'"):
        resolve_source("tiny-l2-eps05")


def test_published_model_loads_once_its_file_is_local():
    torch.manual_seed(0)
    net = resnet18().eval()
    state = {f"module.model.{k}": v for k, v in net.state_dict().items()}
    state["module.normalizer.new_mean"] = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    state["module.normalizer.new_std"] = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    zoo.zoo_dir().mkdir(parents=True)
    torch.save({"model": state, "epoch": 90}, zoo.zoo_dir() / "resnet18_l2_eps3.ckpt")
    model = load_source("resnet18-l2-eps3")
    record = model.source_record
    assert model.arch == "resnet18" and model.num_classes == 1000
    assert (record.kind, record.norm, record.eps, record.arch) == ("published", "l2", 3.0, "resnet18")
    assert record.sha256 == hashlib.sha256(record.path.read_bytes()).hexdigest()
    row = next(r for r in zoo.zoo_listing() if r["name"] == "resnet18-l2-eps3")
    assert row["local"]


# --- the CLI ---------------------------------------------------------------------------
def test_cli_zoo_list(capsys):
    _embed()
    assert main(["zoo", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "ARCH", "NORM", "EPS", "SOURCE", "CLEAN", "ROBUST", "LOCAL"]
    assert lines[1].split() == ["tiny-l2-eps0.5", "small_resnet", "l2", "0.5", "fmnist", "80.0%", "60.0%", "yes"]
    r50 = next(line.split() for line in lines if line.startswith("resnet50-linf-eps4 "))
    assert r50 == ["resnet50-linf-eps4", "resnet50", "linf", "4/255", "imagenet", "63.9%", "-", "no"]
    assert main(["zoo", "list", "--local"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_cli_zoo_fetch(capsys):
    assert main(["zoo", "fetch", "resnet50-l2-eps3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: resnet50_l2_eps3.ckpt is not in") and err.count("\n") == 1
    target = zoo.zoo_dir() / "resnet50_l2_eps3.ckpt"
    target.parent.mkdir(parents=True)
    target.touch()
    assert main(["zoo", "fetch", "resnet50-l2-eps3"]) == 0
    assert capsys.readouterr().out.strip() == str(target)
    assert main(["zoo", "fetch", "nope"]) == 2
    assert "unknown zoo model 'nope'" in capsys.readouterr().err


def test_every_zoo_option_has_help():
    parser = build_parser()
    zoo_parser = _subparser(parser, "zoo")
    for action_name in ("list", "fetch"):
        sub = _subparser(zoo_parser, action_name)
        for action in sub._actions:
            assert action.help, f"zoo {action_name} {action.option_strings or action.dest}"


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]
