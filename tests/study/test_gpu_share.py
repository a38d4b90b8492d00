"""A run's share of a GPU: from Ray's num_gpus or the local runs at a time, carried to the run."""

from __future__ import annotations

import pytest
import torch

from robust_transfer.data.loader import DEVICE_DATA_FRACTION, device_budget
from robust_transfer.study.runner import _context, gpu_share
from robust_transfer.study.worker import keep_to_share


def test_share_comes_from_num_gpus_or_the_local_workers():
    assert gpu_share(0.25) == 0.25 and gpu_share(0.25, 4) == 0.25
    assert gpu_share(0, 4) == 0.25 and gpu_share(1, 2) == 0.5
    assert gpu_share(0) == gpu_share(0, 1) == gpu_share(2) == 1.0


def test_the_study_context_carries_share_and_budget(tmp_path):
    from robust_transfer.study import load_spec
    from robust_transfer.study.resolve import resolve_study

    spec = load_spec({"sources": ["fmnist-natural"], "targets": ["digits"], "train_images": [50],
                      "unfrozen_blocks": [0], "epochs": 1, "device_budget": "3 GiB",
                      "resources": {"num_gpus": 0.25}})
    ctx = _context(resolve_study(spec), tmp_path, local_workers=None)
    assert (ctx.gpu_share, ctx.device_budget) == (0.25, 3 * 2**30)
    assert device_budget("cpu", ctx.gpu_share, ctx.device_budget).total == 3 * 2**30
    keep_to_share(torch.device("cpu"), 0.25)  # nothing to limit on the CPU


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_quarter_share_limits_the_allocator_and_the_budget():
    dev = torch.device("cuda")
    total = torch.cuda.get_device_properties(dev).total_memory
    assert device_budget(dev, 0.25).total == int(total * 0.25 * DEVICE_DATA_FRACTION)
    keep_to_share(dev, 0.25)
    try:
        with pytest.raises(torch.OutOfMemoryError):
            torch.empty(int(total * 0.3), dtype=torch.uint8, device=dev)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, dev)
