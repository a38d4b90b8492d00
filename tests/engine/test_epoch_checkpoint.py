"""A fine-tuning run stopped after any epoch and resumed from its checkpoint ends exactly
as an uninterrupted one (weights, optimiser, schedule, RNG), with augmentation on."""

from __future__ import annotations

import copy

import pytest
import torch

from robust_transfer.engine.training import load_epoch_state
from robust_transfer.engine.transfer import Recipe, finetune
from robust_transfer.events import EpochDone, ProgressEvent


class Stop(Exception):
    pass


def _stop_after(epoch: int):
    def callback(event: ProgressEvent) -> None:
        if isinstance(event, EpochDone) and event.metrics.epoch == epoch:
            raise Stop  # the checkpoint of this epoch is already saved
    return callback


@pytest.mark.parametrize("unfrozen", [0, 1])
def test_resumed_finetune_equals_uninterrupted(digits_net, digits_train, digits_test, tmp_path,
                                               unfrozen):
    # augmentation draws from torch's global RNG each epoch: a resume must restore it
    recipe = Recipe(lr=0.05, batch_size=32, augment=True, schedule="step")
    kwargs = dict(n=60, unfrozen=unfrozen, epochs=3, seed=1, recipe=recipe, device="cpu")
    whole = finetune(copy.deepcopy(digits_net), digits_train, digits_test, **kwargs)
    ckpt = tmp_path / "run.pt"
    with pytest.raises(Stop):
        finetune(copy.deepcopy(digits_net), digits_train, digits_test, checkpoint=str(ckpt),
                 callback=_stop_after(1), **kwargs)
    assert len(load_epoch_state(ckpt)["history"]) == 1
    torch.manual_seed(12345)  # a fresh process would start from other RNG states
    resumed = finetune(copy.deepcopy(digits_net), digits_train, digits_test,
                       checkpoint=str(ckpt), **kwargs)
    keys = ("epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc")
    assert [[m.to_dict()[k] for k in keys] for m in resumed.history] == \
           [[m.to_dict()[k] for k in keys] for m in whole.history]
    for a, b in zip(resumed.model.state_dict().values(), whole.model.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)
    assert len(load_epoch_state(ckpt)["history"]) == 3


def test_without_checkpoint_nothing_is_written(digits_net, digits_train, digits_test, tmp_path,
                                               monkeypatch):
    monkeypatch.chdir(tmp_path)
    finetune(copy.deepcopy(digits_net), digits_train, digits_test, n=30, epochs=1, device="cpu")
    assert list(tmp_path.iterdir()) == []
