"""Fine-tuned models named on the command line, for ``influence`` and ``saliency``.

Either checkpoints (``-c robust=PATH``), whose metadata says what they were fine-tuned on
(target, n, seed: ``finetune --out`` records them), or finished study runs (``--study DIR
--run ID``), fine-tuned again from their stored config.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from robust_transfer.cli import validate as v
from robust_transfer.cli.common import n_images
from robust_transfer.errors import ConfigError
from robust_transfer.models.finetune import n_label, parse_n

if TYPE_CHECKING:  # torch-heavy: imported when the models are loaded, not for --help
    from robust_transfer.models.arch import TransferModel

UNSET: Any = argparse.SUPPRESS  # --n and --seed left out: taken from the checkpoints


@dataclass
class ExplainInputs:
    """What the explanation runs on.

    Attributes:
        models: fine-tuned models by name.
        dataset: the target they were fine-tuned on.
        n: the training images they saw (``None`` = all); ``train_indices`` when exact.
        seed: the seed of their training subset (and of the test images chosen).
        train_indices: the training images of study runs (``None`` for checkpoints).
        provenance: what to record in the outputs' summary.
    """

    models: dict[str, TransferModel]
    dataset: str
    n: int | None
    seed: int
    train_indices: np.ndarray | None = None
    provenance: dict[str, Any] = field(default_factory=dict)


def add_inputs(parser: argparse.ArgumentParser, with_n: bool) -> None:
    """The options naming the models and their data, shared by influence and saliency."""
    parser.add_argument("--checkpoint", "-c", action="append", default=None, metavar="[NAME=]PATH",
                        help="a fine-tuned checkpoint, optionally named (e.g. robust=runs/r.safetensors); "
                        "repeat for side-by-side figures (default name: the file's stem)")
    parser.add_argument("--study", default=None, metavar="DIR",
                        help="a study directory: use --run instead of --checkpoint")
    parser.add_argument("--run", action="append", default=None, metavar="[NAME=]RUN_ID",
                        help="a finished run of --study (id or unique prefix), re-fine-tuned from its "
                        "stored config; repeat for side by side (e.g. robust=3fa2 natural=91bc)")
    parser.add_argument("--dataset", default=None,
                        help="target dataset (default: the one the checkpoints record, or the "
                        "runs' target); needed for checkpoints that record none")
    parser.add_argument("--data-root", default=None, metavar="DIR",
                        help="dataset folder (default: $ROBUST_TRANSFER_DATA or the user cache)")
    parser.add_argument("--seed", type=v.seed, default=UNSET,
                        help="seed of the image subsets (default: the checkpoints' fine-tuning "
                        "seed, else 0); a seed contradicting the checkpoints is refused")
    if with_n:
        parser.add_argument("--n", type=n_images, default=UNSET, metavar="N|all",
                            help="training images: the class-balanced subset the head was fine-tuned "
                            "on (default: as the checkpoints record, else all); a value "
                            "contradicting the checkpoints is refused")
    parser.add_argument("--out", required=True, type=v.out_dir, metavar="DIR",
                        help="output folder; must not exist unless --overwrite")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into an existing output folder")


def explain_inputs(args: argparse.Namespace) -> ExplainInputs:
    """Load the models and decide the data, refusing contradictions.

    Raises:
        ConfigError: both or neither of checkpoints and runs; options contradicting what
            the checkpoints record; checkpoints fine-tuned on different data.
    """
    if bool(args.checkpoint) == bool(args.run):
        raise ConfigError("give either --checkpoint PATH (repeatable) or --study DIR with --run ID")
    if args.checkpoint:
        return _from_checkpoints(args)
    if not args.study:
        raise ConfigError("--run needs --study DIR")
    return _from_runs(args)


def checkpoint_names(specs: list[str]) -> dict[str, Path]:
    """``NAME=PATH`` or ``PATH`` (named by its stem) -> ``{name: path}``."""
    out: dict[str, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = Path(spec).stem, spec
        if not name or not path:
            raise ConfigError(f"--checkpoint '{spec}' must be PATH or NAME=PATH")
        if name in out:
            raise ConfigError(f"two checkpoints are named '{name}'; name them NAME=PATH")
        out[name] = Path(path)
    return out


def finetuned_on(meta: dict[str, Any]) -> tuple[str, int | None, int] | None:
    """(target, n, seed) a checkpoint was fine-tuned with, if its metadata records them."""
    if meta.get("training") != "finetune" or "target" not in meta or "seed" not in meta:
        return None
    n = meta.get("n_requested", meta.get("n"))
    return str(meta["target"]), parse_n(n), int(meta["seed"])


def _from_checkpoints(args: argparse.Namespace) -> ExplainInputs:
    from robust_transfer.models.sources import load_source

    paths = checkpoint_names(args.checkpoint)
    models = {name: load_source(path) for name, path in paths.items()}
    recorded = {name: finetuned_on(m.source_record.metadata) for name, m in models.items()}
    settings = set(filter(None, recorded.values()))
    if len(settings) > 1:
        listed = "; ".join(f"{k}: {_describe(v)}" for k, v in recorded.items() if v)
        raise ConfigError(f"the checkpoints were fine-tuned on different data ({listed}); "
                          "compare checkpoints of one target, n and seed")
    given_n, given_seed = vars(args).get("n", UNSET), vars(args).get("seed", UNSET)
    if settings:
        target, n, seed = settings.pop()
        _agree("--dataset", args.dataset, target, target)
        _agree("--n", given_n, n_label(n), target, lambda v: n_label(v))
        _agree("--seed", given_seed, str(seed), target, str)
    else:
        if not args.dataset:
            raise ConfigError("--dataset is required: the checkpoints do not record a fine-tuning "
                              "target (fine-tune with `robust-transfer finetune --out` to record it)")
        target = args.dataset
        n = None if given_n is UNSET else given_n
        seed = 0 if given_seed is UNSET else given_seed
    return ExplainInputs(models, target, n, seed,
                         provenance={"checkpoints": {k: str(v) for k, v in paths.items()}})


def _agree(option: str, given: Any, recorded: str, target: str, show=str) -> None:
    if given is UNSET or (option == "--dataset" and given is None):
        return
    if show(given) != recorded:
        raise ConfigError(f"{option} {show(given)} contradicts the checkpoints, fine-tuned with "
                          f"{option.lstrip('-')} {recorded} (on {target}); leave {option} out to "
                          "use theirs")


def _describe(setting: tuple[str, int | None, int]) -> str:
    target, n, seed = setting
    return f"{target}, n={n_label(n)}, seed={seed}"


def _from_runs(args: argparse.Namespace) -> ExplainInputs:
    from robust_transfer.study.replay import replay_run

    models, targets, indices, runs = {}, set(), None, {}
    for spec in args.run:
        name, sep, rid = spec.partition("=")
        name, rid = (name, rid) if sep else (spec, spec)
        replay = replay_run(args.study, rid, args.data_root)
        models[name] = replay.result.model
        targets.add(replay.config.target)
        runs[name] = {"run_id": replay.run_id, "config": replay.config.to_dict(),
                      "stored_test_acc": replay.stored_test_acc,
                      "replayed_test_acc": replay.result.test_acc}
        print(f"replayed run {replay.run_id} ({name}): test acc {replay.result.test_acc:.4f}, "
              f"stored {replay.stored_test_acc:.4f}", file=sys.stderr)
        if indices is None or len(replay.result.train_indices) < len(indices):
            indices = replay.result.train_indices
    if len(targets) != 1:
        raise ConfigError(f"the runs have different targets ({', '.join(sorted(targets))}); "
                          "compare runs of one target")
    target = targets.pop()
    if args.dataset and args.dataset != target:
        raise ConfigError(f"--dataset {args.dataset} but the runs were fine-tuned on {target}")
    seed = vars(args).get("seed", UNSET)
    return ExplainInputs(models, target, len(indices) if indices is not None else None,
                         0 if seed is UNSET else seed, indices,
                         {"study": str(args.study), "runs": runs})
