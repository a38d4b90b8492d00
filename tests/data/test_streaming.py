"""``imagefolder:PATH``: source training that streams an ImageNet-style folder from disk."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from robust_transfer.cli import main
from robust_transfer.data.streaming import streaming_split
from robust_transfer.engine.pretrain import PretrainConfig, pretrain
from robust_transfer.errors import DatasetError
from robust_transfer.models.checkpoints import load_model


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Two classes of 40x30 RGB images (bright vs dark), ImageNet layout."""
    root = tmp_path_factory.mktemp("imagenet")
    rng = np.random.default_rng(0)
    for split, count in (("train", 24), ("val", 8)):
        for label, base in (("bright", 200), ("dark", 40)):
            d = root / split / label
            d.mkdir(parents=True)
            for i in range(count):
                arr = np.clip(base + rng.normal(0, 20, (30, 40, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(arr).save(d / f"{i}.JPEG", format="JPEG")
    return root


def test_loader_yields_pixels_at_the_model_size(folder):
    split = streaming_split(f"imagefolder:{folder}", "train", 16, 8, augment=True, workers=0)
    x, y = next(iter(split))
    assert x.shape == (8, 3, 16, 16) and x.min() >= 0 and x.max() <= 1
    assert split.classes == ["bright", "dark"] and split.num_images == 48 and len(split) == 6


def test_pretrain_streams_and_learns(folder):
    cfg = PretrainConfig(arch="small_resnet", dataset=f"imagefolder:{folder}", epochs=3,
                         batch_size=8, input_size=16, loader_workers=0)
    model, history, meta = pretrain(cfg, device="cpu")
    assert meta["train_images"] == 48 and model.num_classes == 2
    assert history[-1].test_acc >= 0.9  # bright vs dark is trivially separable


def test_missing_val_folder_is_one_clear_error(folder, tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(DatasetError, match="val/"):
        streaming_split(f"imagefolder:{tmp_path}", "test", 16, 8, workers=0)


def test_cli_pretrain_on_an_image_folder(folder, tmp_path, capsys):
    out = tmp_path / "m"
    code = main(["pretrain", "--arch", "small_resnet", "--dataset", f"imagefolder:{folder}",
                 "--epochs", "1", "--batch-size", "8", "--input-size", "16", "--workers", "0",
                 "--device", "cpu", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    model, meta = load_model(out)
    assert meta["source_dataset"].startswith("imagefolder:") and model.input_size == 16


def test_a_damaged_image_read_by_a_loader_worker_is_one_line_naming_it(tmp_path):
    for split in ("train", "val"):
        for label in ("a", "b"):
            (tmp_path / split / label).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(np.full((8, 8, 3), 50 * i, np.uint8)).save(
                    tmp_path / split / label / f"{i}.png")
    cut = tmp_path / "train" / "b" / "1.png"
    cut.write_bytes(cut.read_bytes()[:-30])
    split = streaming_split(f"folder:{tmp_path}", "train", 8, 4, augment=False, workers=1)
    with pytest.raises(DatasetError) as err:
        list(split)
    assert str(err.value).startswith(f"{cut} cannot be decoded") and "\n" not in str(err.value)
