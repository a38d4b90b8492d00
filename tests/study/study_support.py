"""Helpers for the study tests (no tests here): tiny sources, specs, fixed-length runs."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import torch

from robust_transfer.models import build_architecture, save_model
from robust_transfer.study.store import RunOutcome
from robust_transfer.study.worker import RunContext, RunTask


def make_sources(folder: Path) -> dict[str, Path]:
    """Two random small ResNets at 16 px saved as checkpoints: 'natural' and 'robust'."""
    paths = {}
    for seed, (label, meta) in enumerate([
            ("natural", {"training": "natural", "eps": 0.0, "norm": "none"}),
            ("robust", {"training": "pgd", "eps": 0.5, "norm": "l2"})]):
        torch.manual_seed(seed)
        model = build_architecture("small_resnet", 10, mean=(0.3,) * 3, std=(0.35,) * 3, input_size=16)
        paths[label] = save_model(model, folder / label, {**meta, "source_dataset": "digits"})
    return paths


def write_spec(folder: Path, sources: dict[str, Path], name: str = "spec.yaml",
               body: str | None = None) -> Path:
    """A 8-run study (2 sources x 2 n x 2 seeds) unless ``body`` replaces the axes."""
    axes = body or """\
        train_images: [30, 60]
        unfrozen_blocks: [0]
        epochs: 2
        seeds: [0, 1]
        recipe: {lr: 0.05, batch_size: 32}
        """
    text = textwrap.dedent(f"""\
        name: tiny
        sources:
          - {{model: {sources['natural']}, label: natural}}
          - {{model: {sources['robust']}, label: robust}}
        targets: [digits]
        """) + textwrap.dedent(axes)
    path = folder / name
    path.write_text(text)
    return path


def sleep_run(task: RunTask, ctx: RunContext) -> RunOutcome:
    """A stand-in run of fixed duration (0.2 s) with a 3-epoch history."""
    start = time.time()
    time.sleep(0.2)
    history = tuple({"epoch": e, "lr": 0.1, "train_loss": 1.0, "train_acc": 0.5,
                     "test_loss": 1.0, "test_acc": 0.5} for e in (1, 2, 3))
    return RunOutcome(task.run_id, "finished", start, time.time(), n=10, history=history)
