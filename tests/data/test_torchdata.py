"""Any torch Dataset or DataLoader of (image, label) at the Python API's boundary."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, IterableDataset

from robust_transfer.data import InputPolicy, as_image_arrays, load_dataset
from robust_transfer.data.streaming import is_streaming, streaming_split
from robust_transfer.data.torchdata import as_image_arrays_pair
from robust_transfer.engine.attacks import AttackConfig
from robust_transfer.engine.training import TensorLoader, evaluate
from robust_transfer.engine.transfer import Recipe, finetune
from robust_transfer.errors import DatasetError


class Wrapped(Dataset):
    """ImageArrays seen through a torchvision-style dataset with a chosen item form."""

    def __init__(self, arrays, form: str = "pil"):
        self.arrays, self.form = arrays, form
        self.classes = list(arrays.info.classes)

    def __len__(self):
        return len(self.arrays)

    def __getitem__(self, i):
        img = self.arrays.images[i]  # uint8 [C, H, W]
        label = int(self.arrays.labels[i])
        if self.form == "pil":
            arr = img.permute(1, 2, 0).numpy()
            return Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr), label
        if self.form == "float_chw":  # what transforms.ToTensor() gives
            return img.float() / 255, torch.tensor(label)
        if self.form == "numpy_hwc":
            return img.permute(1, 2, 0).numpy(), np.int64(label)
        if self.form == "dict":
            return {"image": img, "label": label}
        if self.form == "normalized":
            return (img.float() / 255 - 0.5) / 0.25, label
        raise AssertionError(self.form)


@pytest.fixture(scope="module")
def small(digits_train):
    return digits_train.subset(np.arange(60))


@pytest.mark.parametrize("form", ["pil", "float_chw", "numpy_hwc"])
def test_dataset_items_become_the_same_uint8_arrays(small, form):
    arrays = as_image_arrays(Wrapped(small, form))
    assert torch.equal(arrays.images, small.images) and torch.equal(arrays.labels, small.labels)
    assert arrays.info.classes == small.info.classes and arrays.info.channels == 1


def test_rgb_pil_and_hwc_arrays(small):
    rgb = small.images.repeat(1, 3, 1, 1)
    rgb[:, 0] //= 2  # make channels differ, so a wrong layout shows
    ds = [(Image.fromarray(x.permute(1, 2, 0).numpy()), 1) for x in rgb[:5]]
    assert torch.equal(as_image_arrays(ds).images, rgb[:5])
    hwc = [(x.permute(1, 2, 0).numpy(), 0) for x in rgb[:5]]
    assert torch.equal(as_image_arrays(hwc).images, rgb[:5])


def test_dataloader_batches_and_iterable_datasets(small):
    loader = DataLoader(Wrapped(small, "float_chw"), batch_size=16)
    arrays = as_image_arrays(loader)
    assert torch.equal(arrays.images, small.images) and arrays.info.classes == small.info.classes

    class Stream(IterableDataset):
        def __iter__(self):
            return ((small.images[i], int(small.labels[i])) for i in range(len(small)))

    assert torch.equal(as_image_arrays(Stream()).labels, small.labels)


@pytest.mark.parametrize("form, message", [
    ("dict", "item 0 of Wrapped is a dict with keys .*not an \\(image, label\\) pair"),
    ("normalized", "must lie in \\[0, 1\\] \\(drop any Normalize"),
])
def test_bad_items_give_one_line(small, form, message):
    with pytest.raises(DatasetError, match=message) as err:
        as_image_arrays(Wrapped(small, form))
    assert "\n" not in str(err.value)


def test_other_bad_inputs(small):
    with pytest.raises(DatasetError, match="not an \\(image, label\\) pair"):
        as_image_arrays([(small.images[0], 1, "extra")])
    with pytest.raises(DatasetError, match="images differ in shape"):
        as_image_arrays([(torch.zeros(1, 8, 8, dtype=torch.uint8), 0),
                         (torch.zeros(1, 9, 9, dtype=torch.uint8), 0)])
    with pytest.raises(DatasetError, match="one-hot"):
        as_image_arrays([(torch.zeros(1, 8, 8, dtype=torch.uint8), torch.tensor([0.0, 1.0]))])
    with pytest.raises(DatasetError, match="yielded no items"):
        as_image_arrays([])
    with pytest.raises(DatasetError, match="DataLoader cannot batch .*pass its Dataset"):
        as_image_arrays(DataLoader(Wrapped(small, "pil"), batch_size=4))
    assert len(as_image_arrays(Wrapped(small, "pil"))) == len(small)


def test_finetune_accepts_torch_data(small, digits_test, digits_net):
    test = digits_test.subset(np.arange(30))
    args = dict(n=None, unfrozen=1, epochs=1, recipe=Recipe(batch_size=20, lr=0.05), device="cpu")
    ours = finetune(digits_net, small, test, **args)
    theirs = finetune(digits_net, Wrapped(small, "pil"), DataLoader(Wrapped(test, "float_chw"), 8), **args)
    assert theirs.test_acc == ours.test_acc
    assert torch.equal(theirs.model.head.weight, ours.model.head.weight)


def test_pair_shares_name_and_classes(small):
    train, test = as_image_arrays_pair(Wrapped(small), Wrapped(small.subset(np.arange(3))))
    assert test.info.name == train.info.name and test.info.classes == train.info.classes


def test_evaluate_and_attacks_accept_torch_data(small, digits_net):
    model = copy.deepcopy(digits_net)
    reference = TensorLoader(small.images, small.labels, 256,
                             transform=InputPolicy(3, model.input_size).prepare)
    assert evaluate(model, Wrapped(small, "pil"), device="cpu") == evaluate(model, reference, device="cpu")
    attack = AttackConfig("linf", 8 / 255, 3)
    torch.manual_seed(0)
    robust = evaluate(model, DataLoader(Wrapped(small, "float_chw"), 16), attack, "cpu")[1]
    torch.manual_seed(0)
    assert robust == evaluate(model, reference, attack, "cpu")[1]


# --- folder: and imagefolder: are one dataset kind -----------------------------------------
def _write(root, split, n=2):
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (root / split / cls).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (10, 12, 3), dtype=np.uint8)).save(
                root / split / cls / f"{i}.png")


def test_both_spellings_read_the_same_folder_with_val_or_test(tmp_path):
    _write(tmp_path, "train")
    _write(tmp_path, "val", 1)
    a = load_dataset(f"folder:{tmp_path}", "test")
    b = load_dataset(f"imagefolder:{tmp_path}", "test")
    assert torch.equal(a.images, b.images) and len(a) == 2
    assert is_streaming(f"folder:{tmp_path}") and is_streaming(f"imagefolder:{tmp_path}")
    split = streaming_split(f"folder:{tmp_path}", "test", 8, 4, workers=0)
    assert split.num_images == 2 and split.classes == ["a", "b"]
    _write(tmp_path, "test", 3)  # test/ wins over val/ for both readers
    assert len(load_dataset(f"imagefolder:{tmp_path}", "test")) == 6
    assert streaming_split(f"imagefolder:{tmp_path}", "test", 8, 4, workers=0).num_images == 6
