"""Source training: a tiny natural and adversarial run, and two CPU processes under torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from robust_transfer.data import datasets as ds
from robust_transfer.engine.attacks import AttackConfig
from robust_transfer.engine.pretrain import PretrainConfig, dataset_stats, pretrain
from robust_transfer.engine.training import OptimConfig
from robust_transfer.errors import ConfigError, OutputExistsError
from robust_transfer.models.checkpoints import refuse_existing

TINY = {"dataset": "digits", "input_size": 12, "epochs": 1, "batch_size": 64,
        "train_images": 300, "eval_images": 100, "optim": OptimConfig(lr=0.05)}


def test_tiny_natural_pretrain():
    model, history, meta = pretrain(PretrainConfig(**TINY), device="cpu")
    assert len(history) == 1 and 0 <= history[0].test_acc <= 1
    assert meta["clean_acc"] == history[0].test_acc and meta["robust_acc"] is None
    assert (meta["training"], meta["norm"], meta["eps"]) == ("natural", "none", 0.0)
    assert (meta["architecture"], meta["num_classes"], meta["input_size"]) == ("small_resnet", 10, 12)
    assert meta["train_images"] == 300 and meta["test_images"] == 100 and meta["world_size"] == 1
    json.dumps(meta)  # the metadata is stored as JSON
    # the normaliser holds the training images' statistics, grey repeated to 3 channels
    mean = model.normalizer.mean.flatten()
    assert mean.shape == (3,) and torch.all(mean == mean[0]) and 0.1 < float(mean[0]) < 0.5
    assert not model.training


def test_tiny_adversarial_pretrain():
    cfg = PretrainConfig(**TINY, adversary=AttackConfig("l2", 0.5, steps=2))
    model, history, meta = pretrain(cfg, device="cpu")
    assert meta["training"] == "pgd" and meta["norm"] == "l2" and meta["eps"] == 0.5
    assert meta["attack_steps"] == 2 and meta["attack_step_size"] == pytest.approx(2.5 * 0.5 / 2)
    assert meta["robust_eval"]["steps"] == 20  # PGD-20 by default
    assert meta["robust_acc"] is not None and meta["robust_acc"] <= meta["clean_acc"]
    fast = PretrainConfig(**TINY, adversary=AttackConfig("linf", 8 / 255, steps=1, method="fgsm_rs"))
    assert fast.method == "fgsm_rs" and fast.to_dict()["adversary"]["step_size"] == pytest.approx(10 / 255)


@pytest.mark.skipif(not ds.DEBIAN_FMNIST.is_dir(), reason="dataset-fashion-mnist not installed")
def test_pretrain_on_fashion_mnist():
    cfg = PretrainConfig(dataset="fmnist", epochs=1, batch_size=64, train_images=256, eval_images=100)
    model, history, meta = pretrain(cfg, device="cpu")
    assert model.input_size == 28 and meta["source_dataset"] == "fmnist"
    assert meta["train_images"] == 256 and 0 <= meta["clean_acc"] <= 1
    with torch.no_grad():
        assert model(torch.rand(2, 3, 28, 28)).shape == (2, 10)


def test_pretrain_errors(tmp_path):
    with pytest.raises(ConfigError, match="1348"):
        pretrain(PretrainConfig(**{**TINY, "train_images": 5000}), device="cpu")
    (tmp_path / "m.json").write_text("{}")
    with pytest.raises(OutputExistsError, match="overwrite"):
        refuse_existing(tmp_path / "m", overwrite=False)
    refuse_existing(tmp_path / "m", overwrite=True)


def test_dataset_stats():
    images = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1).expand(2, 1, 2, 2)
    mean, std = dataset_stats(images, 3)
    assert mean == (0.5, 0.5, 0.5) and len(std) == 3 and std[0] > 0.5


WORKER = """
    import sys
    import torch
    import torch.distributed as dist
    import robust_transfer.engine.pretrain as P
    from robust_transfer.cli import main

    real = P.pretrain

    def pretrain_and_save_rank(*args, **kwargs):
        model, history, meta = real(*args, **kwargs)
        state = {{k: v.detach().clone() for k, v in model.state_dict().items()}}
        torch.save({{"state": state, "world": meta["world_size"]}}, f"{out}/rank{{dist.get_rank()}}.pt")
        return model, history, meta

    P.pretrain = pretrain_and_save_rank  # the CLI imports it when the command runs
    sys.exit(main(sys.argv[1:]))
"""


def test_two_processes_under_torchrun_end_with_identical_weights(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(WORKER.format(out=tmp_path)))
    args = ["pretrain", "--dataset", "digits", "--input-size", "12", "--train-images", "256",
            "--eval-images", "100", "--epochs", "1", "--batch-size", "32", "--device", "cpu",
            "--attack", "pgd", "--eps", "0.5", "--attack-steps", "2", "--out", str(tmp_path / "ddp")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", "2", str(script), *args],
                          capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("pretrain epoch 1") == 1  # only rank 0 reports
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert ranks[0]["world"] == ranks[1]["world"] == 2
    s0, s1 = ranks[0]["state"], ranks[1]["state"]
    assert s0.keys() == s1.keys()
    for key in s0:  # parameters and BatchNorm buffers alike
        assert torch.equal(s0[key], s1[key]), key
    # only rank 0 wrote the checkpoint, and it holds those same weights
    from robust_transfer.models.checkpoints import load_model

    model, meta = load_model(tmp_path / "ddp")
    assert meta["world_size"] == 2 and meta["training"] == "pgd"
    for key, value in model.state_dict().items():
        assert torch.equal(value, s0[key]), key
    # rank 0 alone also wrote the per-epoch metrics: one row for the one epoch
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ddp.json", "ddp.metrics.csv", "ddp.safetensors", "rank0.pt", "rank1.pt", "worker.py"]
    lines = (tmp_path / "ddp.metrics.csv").read_text().strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("epoch") and lines[1].startswith("1,")
