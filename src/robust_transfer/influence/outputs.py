"""Influence results on disk: arrays (.npz), figures (.png) and a small JSON summary.

Layout of an output folder::

    summary.json            config, damping, solver, top-1 class match, timings per model
    class_match.png         Fig. 6, every model on one plot
    influence_grid.png      Fig. 5, models side by side
    <model>/influence.npz   scores, train_scores, self_influence, top-k, curves, indices

Every file goes through :func:`robust_transfer.io.atomic_write`: whole or absent.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from robust_transfer.data import ImageArrays
from robust_transfer.errors import ConfigError
from robust_transfer.events import Listener, ProgressEvent, StepDone, as_event
from robust_transfer.influence.analysis import ClassMatchCurve, class_match_from_ranks
from robust_transfer.influence.core import InfluenceConfig, InfluenceResult, influence_for_model
from robust_transfer.influence.plots import InfluenceGrid, plot_class_match, plot_influence_grids
from robust_transfer.influence.streaming import Ranking
from robust_transfer.io import safe_filename, staged_dir
from robust_transfer.outputs import prepare_output_dir, write_json, write_npz

if TYPE_CHECKING:
    from robust_transfer.models.base import TransferModel

__all__ = ["curves_for", "explain_influence", "grid_rows", "model_summary", "prepare_output_dir",
           "write_influence", "write_json", "write_npz"]


def curves_for(result: InfluenceResult, max_rank: int = 100,
               ranking: Ranking | None = None) -> list[ClassMatchCurve]:
    """Class-match curves (helpful order) with test targets and, when scored, training targets.

    Args:
        result: held or streamed scores.
        max_rank: largest rank.
        ranking: ``result.rank(...)`` already made, to reuse.
    """
    if max_rank < 1:
        raise ConfigError(f"max_rank must be >= 1, got {max_rank}")
    ranking = ranking or result.rank(1, max_rank)
    curves = [class_match_from_ranks(ranking.test_ranks[:, :max_rank], result.test_labels,
                                     result.train_labels, targets="test")]
    if ranking.train_ranks is not None:
        curves.append(class_match_from_ranks(ranking.train_ranks[:, :max_rank],
                                             result.train_labels, result.train_labels,
                                             exclude_self=True, targets="train"))
    return curves


def model_summary(result: InfluenceResult, curves: list[ClassMatchCurve]) -> dict[str, Any]:
    """The JSON-sized facts of one model's result."""
    cfg = result.config
    plan = result.info.get("plan", {})
    record = {"damping": cfg.damping, "solver": cfg.solver, "form": result.info.get("form"),
              "exact": plan.get("exact", True), "form_reason": plan.get("reason"),
              "scores": result.info.get("scores", "full"),
              "precision": result.info.get("precision", cfg.precision), "n_train": len(result.train_labels),
              "n_test": len(result.test_labels), "timings_s": result.timings, "info": result.info}
    if isinstance(cfg, InfluenceConfig) and cfg.solver == "pinv":
        record["rcond"] = cfg.rcond
    for c in curves:
        record[f"top1_class_match_{c.targets}"] = {
            "share": float(c.share[0]), "low": float(c.low[0]), "high": float(c.high[0]),
            "n_targets": c.n_targets, "chance": c.chance}
    return record


def _model_arrays(result: InfluenceResult, curves: list[ClassMatchCurve], top: Ranking,
                  train_indices: np.ndarray | None, test_indices: np.ndarray | None) -> dict:
    arrays = {"scores": result.scores, "train_scores": result.train_scores,
              "self_influence": result.self_influence, "train_labels": result.train_labels,
              "test_labels": result.test_labels, "top_helpful": top.helpful,
              "top_helpful_scores": top.helpful_scores, "top_harmful": top.harmful,
              "top_harmful_scores": top.harmful_scores, "damping": np.float64(result.config.damping),
              "train_indices": train_indices, "test_indices": test_indices}
    for c in curves:
        for part in ("share", "low", "high"):
            arrays[f"class_match_{c.targets}_{part}"] = getattr(c, part)
    return arrays


def grid_rows(labels: np.ndarray, rows: int) -> np.ndarray:
    """Test images for Fig. 5: the first image of each class in turn, ``rows`` in all."""
    labels = np.asarray(labels)
    picks: list[int] = []
    for rnd in range(len(labels)):
        for c in np.unique(labels):
            idx = np.flatnonzero(labels == c)
            if rnd < len(idx) and len(picks) < rows:
                picks.append(int(idx[rnd]))
        if len(picks) >= rows:
            break
    return np.array(picks, dtype=np.int64)


def grid_of(result: InfluenceResult, ranking: Ranking, train: ImageArrays, test: ImageArrays,
            rows: np.ndarray, k: int) -> InfluenceGrid:
    """The Fig. 5 grid of ``rows`` test images with their ``k`` most helpful training images."""
    helpful, scores = ranking.helpful[rows, :k], ranking.helpful_scores[rows, :k]
    return InfluenceGrid(
        test_images=test.images[rows].numpy(), test_labels=result.test_labels[rows],
        train_images=train.images[torch.as_tensor(helpful)].numpy(),
        train_labels=result.train_labels[helpful], scores=scores,
        class_names=train.info.classes)


def write_influence(out_dir: str | os.PathLike, results: Mapping[str, InfluenceResult],
                    train: ImageArrays, test: ImageArrays, *, top: int = 10,
                    max_rank: int = 100, grid_size: tuple[int, int] = (6, 8),
                    train_indices: np.ndarray | None = None, test_indices: np.ndarray | None = None,
                    extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Save arrays, Figs. 5 and 6 and ``summary.json`` for one or more models.

    Args:
        out_dir: an existing folder (see :func:`prepare_output_dir`).
        results: model name -> its result on the same ``train`` and ``test``.
        train, test: the images the results were computed on (for Fig. 5).
        top: k of the saved top-k helpful and harmful images.
        max_rank: largest rank of the class-match curves.
        grid_size: (test images, training images per test image) in Fig. 5.
        train_indices, test_indices: where ``train``/``test`` came from in the full splits.
        extra: more provenance for the summary (dataset, checkpoints, seed, ...).

    Returns:
        The summary that was written.
    """
    if not results:
        raise ConfigError("no influence results to write")
    out = Path(out_dir)
    all_curves, models, rankings = {}, {}, {}
    for name, result in results.items():
        rankings[name] = ranking = result.rank(max(top, grid_size[1]), max_rank)
        curves = curves_for(result, max_rank, ranking)
        all_curves[name] = curves
        folder = out / safe_filename(name)  # a name such as '../x' stays inside out_dir
        folder.mkdir(exist_ok=True)
        write_npz(folder / "influence.npz", _model_arrays(
            result, curves, ranking.cut(min(top, ranking.k), ranking.max_rank), train_indices,
            test_indices))
        models[name] = model_summary(result, curves)
    plot_class_match(all_curves, out / "class_match.png")
    rows = grid_rows(next(iter(results.values())).test_labels, grid_size[0])
    plot_influence_grids({n: grid_of(r, rankings[n], train, test, rows, grid_size[1])
                          for n, r in results.items()}, out / "influence_grid.png")
    summary = {"config": next(iter(results.values())).config.to_dict(), "models": models,
               "max_rank": max_rank, "order": "helpful", **(extra or {})}
    write_json(out / "summary.json", summary)
    return summary


def _per_model(callback: Listener | None, name: str, index: int, count: int) -> Listener | None:
    """The solver's steps of model ``index`` of ``count`` as steps over all models."""
    if callback is None:
        return None

    def on_step(event: ProgressEvent | str, info: Mapping[str, Any] | None = None) -> None:
        step = as_event(event, info)  # the old (kind, info) form too
        if not isinstance(step, StepDone) or step.total is None:
            callback(step)
            return
        callback(StepDone(index * step.total + step.done, count * step.total,
                          f"{name}: {step.what}"))

    return on_step


def explain_influence(models: Mapping[str, TransferModel], train: ImageArrays, test: ImageArrays,
                      out_dir: str | os.PathLike, config: InfluenceConfig | None = None, *,
                      overwrite: bool = False, batch_size: int = 256,
                      callback: Listener | None = None,
                      **write_kwargs: Any) -> dict[str, Any]:
    """Influence for each model (e.g. ``robust`` and ``natural``) and all outputs in a folder.

    Args:
        models: name -> fine-tuned :class:`~robust_transfer.models.arch.TransferModel`.
        train, test: the target dataset's training subset and test images.
        out_dir: the folder to create.
        config: see :class:`InfluenceConfig`.
        overwrite: write into an existing folder.
        batch_size: images per forward pass.
        callback: :class:`~robust_transfer.events.StepDone` events counted over all
            models, ``what`` naming the model and the solver's step.
        **write_kwargs: passed to :func:`write_influence` (``top``, ``max_rank``, ...).

    Returns:
        The summary (also in ``out_dir/summary.json``).
    """
    if Path(out_dir).exists() and not overwrite:
        prepare_output_dir(out_dir, overwrite)  # raises now, not after the computation
    results = {}
    for i, (name, model) in enumerate(models.items()):
        results[name] = influence_for_model(model, train, test, None, config, batch_size,
                                            _per_model(callback, name, i, len(models)))
    with staged_dir(out_dir) as stage:  # whole or absent, even when interrupted
        return write_influence(stage, results, train, test, **write_kwargs)
