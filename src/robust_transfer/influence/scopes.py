"""Influence through the head and through the fine-tuned blocks, written side by side.

``influence --through blocks`` writes the usual head-scope output (exact last-layer
influence, :mod:`.core`) into the output folder and the blocks-scope output (EK-FAC over
the head and the unfrozen blocks, :mod:`.blocks`) into its ``blocks/`` subfolder, each a
complete influence output with ``"scope"`` in its ``summary.json``; the report reads both.
Two figures put the scopes side by side::

    class_match_scopes.png     Fig. 6 per scope, models sharing each panel
    influence_grid_scopes.png  Fig. 5 per model and scope, the same test images
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from robust_transfer.data import ImageArrays
from robust_transfer.errors import ConfigError
from robust_transfer.influence.blocks import (
    BlocksConfig,
    NoUnfrozenBlocksError,
    block_influence_for_model,
    require_kronfluence,
    tracked_modules,
)
from robust_transfer.influence.core import InfluenceConfig, InfluenceResult, influence_for_model
from robust_transfer.influence.outputs import curves_for, grid_of, grid_rows, write_influence
from robust_transfer.influence.plots import plot_class_match, plot_influence_grids
from robust_transfer.outputs import prepare_output_dir

if TYPE_CHECKING:
    from robust_transfer.models.arch import TransferModel

BLOCKS_DIR = "blocks"


def with_recorded_blocks(model: TransferModel, name: str) -> TransferModel:
    """The model with the blocks its checkpoint says it fine-tuned marked trainable.

    A replayed study run already carries its frozen depth. A checkpoint written by
    ``finetune --out`` records ``unfrozen_blocks`` in its metadata; a loaded checkpoint
    otherwise looks wholly trainable, so that record decides (on a copy).

    Raises:
        NoUnfrozenBlocksError: the model fine-tuned its head only (or says so).
    """
    from robust_transfer.models.finetune import set_unfrozen_blocks

    meta = getattr(model.source_record, "metadata", None) or {}
    if meta.get("training") == "finetune":
        if "unfrozen_blocks" not in meta:
            raise NoUnfrozenBlocksError(
                f"checkpoint '{name}' does not record which blocks it fine-tuned, so --through "
                "blocks cannot tell what to track; re-save it with `robust-transfer finetune --out`")
        model = copy.deepcopy(model)
        set_unfrozen_blocks(model, str(meta["unfrozen_blocks"]))
    try:
        tracked_modules(model, "blocks")
    except NoUnfrozenBlocksError:
        raise NoUnfrozenBlocksError(
            f"--through blocks needs runs that fine-tuned blocks (unfrozen >= 1), but '{name}' "
            "trained its head only; use --through head (the default) for it") from None
    return model


def explain_scopes(models: Mapping[str, TransferModel], train: ImageArrays, test: ImageArrays,
                   out_dir: str | os.PathLike, config: InfluenceConfig | None = None,
                   blocks_config: BlocksConfig | None = None, *, overwrite: bool = False,
                   batch_size: int = 256, extra: Mapping[str, Any] | None = None,
                   **write_kwargs: Any) -> dict[str, Any]:
    """Head-scope and blocks-scope influence of each model, written side by side.

    Args:
        models: name -> fine-tuned model; each must have unfrozen blocks.
        train, test: the training subset the models saw and the test images.
        out_dir: the folder to create (the head scope; ``blocks/`` inside it).
        config: the head scope's :class:`~robust_transfer.influence.core.InfluenceConfig`.
        blocks_config: the blocks scope's :class:`~robust_transfer.influence.blocks.BlocksConfig`.
        overwrite: write into an existing folder.
        batch_size: images per forward pass (head scope).
        extra: provenance for both summaries.
        **write_kwargs: passed to :func:`~robust_transfer.influence.outputs.write_influence`.

    Returns:
        ``{"head": summary, "blocks": summary}``.

    Raises:
        NoUnfrozenBlocksError: a head-only model (checked before any work or writing).
    """
    if not models:
        raise ConfigError("no models given")
    require_kronfluence()
    models = {name: with_recorded_blocks(m, name) for name, m in models.items()}
    if Path(out_dir).exists() and not overwrite:
        prepare_output_dir(out_dir, overwrite)  # raises now, not after the computation
    bcfg = blocks_config or BlocksConfig(train_targets=(config or InfluenceConfig()).train_targets)
    head = {n: influence_for_model(m, train, test, None, config, batch_size) for n, m in models.items()}
    blocks = {n: block_influence_for_model(m, train, test, bcfg) for n, m in models.items()}
    out = prepare_output_dir(out_dir, overwrite=True)
    summaries = {}
    for scope, results, folder in (("head", head, out), ("blocks", blocks, out / BLOCKS_DIR)):
        folder.mkdir(exist_ok=True)
        summaries[scope] = write_influence(folder, results, train, test,
                                           extra={**(extra or {}), "scope": scope}, **write_kwargs)
    write_scope_figures(out, {"head": head, "blocks": blocks}, train, test,
                        write_kwargs.get("max_rank", 100), write_kwargs.get("grid_size", (6, 8)))
    return summaries


def write_scope_figures(out: Path, scopes: Mapping[str, Mapping[str, InfluenceResult]],
                        train: ImageArrays, test: ImageArrays, max_rank: int = 100,
                        grid_size: tuple[int, int] = (6, 8)) -> list[Path]:
    """Figs. 6 and 5 with one panel per model and scope (``robust | head``, ...)."""
    curves = {f"{name} | {scope}": [c for c in curves_for(r, max_rank) if c.targets == "test"]
              for scope, results in scopes.items() for name, r in results.items()}
    first = next(iter(next(iter(scopes.values())).values()))
    rows = grid_rows(first.test_labels, grid_size[0])
    grids = {f"{name} | {scope}": grid_of(r, r.rank(grid_size[1], max_rank), train, test, rows,
                                        grid_size[1])
             for name in first_names(scopes) for scope, results in scopes.items()
             for r in [results[name]]}
    return [plot_class_match(curves, out / "class_match_scopes.png"),
            plot_influence_grids(grids, out / "influence_grid_scopes.png",
                                 "most helpful training images: last layer (head) and through "
                                 "the fine-tuned blocks (blocks)")]


def first_names(scopes: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The model names, in the first scope's order."""
    return list(next(iter(scopes.values())))
