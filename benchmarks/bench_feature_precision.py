"""Accuracy of fine-tuning with cached prefix outputs rounded to float16 or bfloat16 vs float32.

Not a timing: for each of 48 small runs (targets digits and Fashion-MNIST, two embedded
sources, unfrozen 0 and 1, n 100 and 400, seeds 0-2, 5 epochs) the test accuracy with
float32 prefix outputs, rounded through float16, and rounded through bfloat16; it also
checks that ``Recipe(feature_dtype="float16")`` gives exactly the float16-rounded result.
Measured 2026-12-01 (2-core CPU, about 40 min under load): float16 max |diff| 0.00 points
on digits and 0.01 on Fashion-MNIST (one test image in 10,000); bfloat16 0.22 (one digits
test image in 449) and 0.04.

    .venv/bin/python benchmarks/bench_feature_precision.py
"""
import itertools

import numpy as np
import torch

from robust_transfer.data import load_dataset
from robust_transfer.engine.transfer import MemoryFeatureStore, Recipe, finetune
from robust_transfer.models.checkpoints import load_model
from robust_transfer.models.zoo import fetch

torch.set_num_threads(1)

class Rounding:
    def __init__(self, dtype): self.dtype = dtype
    def get_or_compute(self, key, indices, compute):
        return compute(np.asarray(indices)).to(self.dtype).float()

rows = []
for target in ["digits", "fmnist"]:
    train, test = load_dataset(target, "train"), load_dataset(target, "test")
    for src in ["fmnist-natural", "fmnist-l2-eps1"]:
        model, _ = load_model(fetch(src))
        for unfrozen, n, seed in itertools.product([0, 1], [100, 400], [0, 1, 2]):
            acc = {}
            for name, store in [("fp32", MemoryFeatureStore()), ("fp16", Rounding(torch.float16)),
                                ("bf16", Rounding(torch.bfloat16))]:
                r = finetune(model, train, test, n=n, unfrozen=unfrozen, epochs=5, seed=seed,
                             recipe=Recipe(lr=0.1, batch_size=128, augment=False), device="cpu",
                             source_id=src, feature_store=store)
                acc[name] = r.test_acc
            r16 = finetune(model, train, test, n=n, unfrozen=unfrozen, epochs=5, seed=seed,
                           recipe=Recipe(lr=0.1, batch_size=128, augment=False, feature_dtype="float16"),
                           device="cpu", source_id=src)
            assert r16.test_acc == acc["fp16"], (r16.test_acc, acc["fp16"])
            d16, dbf = 100 * (acc["fp16"] - acc["fp32"]), 100 * (acc["bf16"] - acc["fp32"])
            rows.append((target, src, unfrozen, n, seed, d16, dbf))
            print(target, src, unfrozen, n, seed, f"fp32 {acc['fp32']:.4f} fp16 {d16:+.2f} bf16 {dbf:+.2f} pts", flush=True)
d16 = np.array([r[5] for r in rows])
dbf = np.array([r[6] for r in rows])
for t in ["digits", "fmnist"]:
    m = np.array([r[0] == t for r in rows])
    print(t, f"fp16: max |diff| {np.abs(d16[m]).max():.2f} pts, mean |diff| {np.abs(d16[m]).mean():.3f}; "
          f"bf16: max |diff| {np.abs(dbf[m]).max():.2f} pts, mean |diff| {np.abs(dbf[m]).mean():.3f}")
