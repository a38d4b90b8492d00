"""``pretrain``, ``finetune`` and ``evaluate``."""

from __future__ import annotations

import argparse
import json
import os
import shlex
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

from robust_transfer.cli import validate as v
from robust_transfer.cli.common import (
    add_data_root,
    add_device,
    command_help,
    n_images,
    parse_eps,
    unfrozen_blocks,
)
from robust_transfer.engine import recipe as recipe_fields
from robust_transfer.engine.choices import SCHEDULES
from robust_transfer.errors import ConfigError

if TYPE_CHECKING:
    from robust_transfer.engine.attacks import AttackConfig

# torch and the engine are imported by the handlers, not here, so that `pretrain --help`,
# `finetune --help` and `evaluate --help` answer in a fraction of a second.
# The names of robust_transfer.models.arch.ARCHS, for the parser (a test keeps the two equal).
ARCH_NAMES = ("resnet18", "resnet50", "small_resnet", "wide_resnet50_2")



def register(sub: argparse._SubParsersAction) -> None:
    _register_pretrain(sub)
    _register_finetune(sub)
    _register_evaluate(sub)


def _add_optim(p: argparse.ArgumentParser, lr: float = 0.1) -> None:
    g = p.add_argument_group("optimiser")
    g.add_argument("--lr", type=v.positive_float, default=lr, help=f"initial learning rate (default {lr})")
    g.add_argument("--momentum", type=v.nonneg_float, default=0.9, help="SGD momentum (default 0.9)")
    g.add_argument("--weight-decay", type=v.nonneg_float, default=5e-4, help="weight decay (default 5e-4)")
    g.add_argument("--schedule", choices=SCHEDULES, default="step",
                   help="step: lr/10 every epochs//3 (the paper's); cosine; constant")
    g.add_argument("--batch-size", type=v.positive_int, default=128, help="batch size (default 128)")


def _add_records(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tensorboard", default=None, metavar="DIR",
                   help="also write TensorBoard scalars into DIR (needs the tensorboard package)")


@contextmanager
def _training_callbacks(desc: str, out, tensorboard: str | None) -> Iterator:
    """Progress, OUT.metrics.csv beside the checkpoint, TensorBoard if asked: one callback.

    The metrics are written under a hidden name while training runs and take their own
    name with the checkpoint (:func:`_publish_metrics`); a failed or interrupted command
    removes them, so no metrics file is left without its checkpoint.
    """
    from robust_transfer.engine.training import MetricsCSV, TensorBoardWriter, combine_callbacks
    from robust_transfer.progress import Progress

    writer = TensorBoardWriter(tensorboard, desc) if tensorboard else None
    metrics = MetricsCSV(_metrics_path(out, partial=True)) if out else None
    try:
        with Progress(desc) as progress:
            yield combine_callbacks(progress, metrics, writer)
    except BaseException:  # Ctrl-C and SIGTERM included
        if metrics is not None:
            metrics.path.unlink(missing_ok=True)
        raise
    finally:
        if writer is not None:
            writer.close()


def _metrics_path(out, partial: bool = False) -> Path:
    """``OUT.metrics.csv``: the per-epoch metrics beside checkpoint ``OUT`` (while training:
    ``.OUT.metrics.csv.partial``)."""
    from robust_transfer.models.checkpoints import checkpoint_paths

    path = Path(str(checkpoint_paths(out)[0].with_suffix("")) + ".metrics.csv")
    return path.with_name(f".{path.name}.partial") if partial else path


def _publish_metrics(out) -> None:
    """The metrics of a saved checkpoint take their name beside it."""
    partial = _metrics_path(out, partial=True)
    if partial.exists():
        os.replace(partial, _metrics_path(out))


def _add_attack(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("adversarial training")
    g.add_argument("--attack", choices=["none", "pgd", "fgsm_rs"], default="none",
                   help="adversarial training attack: none (natural), pgd, fgsm_rs (fast AT)")
    g.add_argument("--norm", choices=["l2", "linf"], default="l2", help="threat model norm")
    g.add_argument("--eps", type=parse_eps, default=0.5,
                   help="radius in pixel units in [0,1] images; fractions allowed (8/255)")
    g.add_argument("--attack-steps", type=v.positive_int, default=7, help="PGD steps (default 7)")
    g.add_argument("--attack-step-size", type=v.positive_eps, default=None,
                   help="PGD step size (default 2.5*eps/steps; FGSM-RS: 1.25*eps)")
    g.add_argument("--random-start", action="store_true", help="start PGD at a random point")


def _register_pretrain(sub) -> None:
    p = sub.add_parser("pretrain", help=command_help("pretrain"),
                       description="Train a source model and save it as safetensors + JSON "
                       "metadata. Runs under torchrun for DistributedDataParallel.")
    p.add_argument("--arch", choices=ARCH_NAMES, default="small_resnet", help="architecture")
    p.add_argument("--dataset", default="fmnist",
                   help="source dataset (see `robust-transfer data list`), or folder:PATH to "
                        "stream an ImageNet-style PATH/train, PATH/val folder from disk")
    add_data_root(p)
    p.add_argument("--epochs", type=v.positive_int, default=5, help="training epochs (default 5)")
    _add_optim(p)
    _add_attack(p)
    p.add_argument("--augment", action="store_true", help="random crop/flip/jitter/rotation")
    p.add_argument("--input-size", type=v.resolution, default=None,
                   help="model input size (default: the dataset's native size)")
    p.add_argument("--train-images", type=n_images, default=None,
                   help="train on this many images of a seeded shuffle (default all)")
    p.add_argument("--eval-images", type=n_images, default=None,
                   help="clean and PGD-20 robust accuracy on this many test images (default all)")
    p.add_argument("--seed", type=v.seed, default=0, help="random seed")
    p.add_argument("--workers", type=v.nonneg_int, default=4,
                   help="data-loading processes for folder:PATH datasets (default 4)")
    add_device(p)
    p.add_argument("--out", required=True, type=v.out_stem, help="checkpoint path stem: writes "
                   "OUT.safetensors, OUT.json and the per-epoch metrics OUT.metrics.csv")
    p.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint")
    _add_records(p)
    p.set_defaults(func=_pretrain)


def _attack_from(args: argparse.Namespace) -> AttackConfig | None:
    from robust_transfer.engine.attacks import AttackConfig

    if args.attack == "none":
        return None
    steps = 1 if args.attack == "fgsm_rs" else args.attack_steps
    return AttackConfig(args.norm, args.eps, steps, args.attack_step_size, args.random_start,
                        method=args.attack)


def _pretrain(args: argparse.Namespace) -> int:
    import torch.distributed as dist

    from robust_transfer.data import load_dataset
    from robust_transfer.data.streaming import is_streaming
    from robust_transfer.engine.pretrain import PretrainConfig, pretrain
    from robust_transfer.engine.training import OptimConfig
    from robust_transfer.models.checkpoints import refuse_existing, save_model

    refuse_existing(args.out, args.overwrite)
    cfg = PretrainConfig(args.arch, args.dataset, args.epochs, args.batch_size,
                         OptimConfig(args.lr, args.momentum, args.weight_decay, args.schedule),
                         _attack_from(args), None, args.augment, args.input_size,
                         args.train_images, args.eval_images, args.seed, args.workers)
    # under torchrun every rank trains; only rank 0 reports (its own shard's train metrics)
    splits = {}
    if args.download and not is_streaming(args.dataset):  # fetched first, then trained on
        splits = {split: load_dataset(args.dataset, split, args.data_root, download=True)
                  for split in ("train", "test")}
    reporting = (_training_callbacks("pretrain", args.out, args.tensorboard)
                 if os.environ.get("RANK", "0") == "0" else nullcontext())
    with reporting as callback:
        model, history, meta = pretrain(cfg, args.data_root, args.device, callback, **splits)
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    if rank == 0:
        meta["command"] = "robust-transfer " + shlex.join(args.argv)
        path = save_model(model, args.out, meta, overwrite=args.overwrite)
        _publish_metrics(args.out)
        robust = meta["robust_acc"]
        print(f"saved {path}: clean acc {meta['clean_acc']:.4f}"
              + (f", robust acc {robust:.4f}" if robust is not None else ""))
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    return 0


def _register_finetune(sub) -> None:
    p = sub.add_parser("finetune", help=command_help("finetune"),
                       description="New head, the last k blocks unfrozen, n training images.")
    p.add_argument("source", help="zoo name (see `robust-transfer zoo list`) or checkpoint path")
    p.add_argument("--target", default="digits", help="target dataset (default digits)")
    add_data_root(p)
    p.add_argument("--n", type=n_images, default=None, help="training images, or 'all' (default)")
    p.add_argument("--unfrozen-blocks", type=unfrozen_blocks, default=0,
                   help="blocks trained besides the head: 0 (head only), k, or 'all'")
    p.add_argument("--epochs", type=v.positive_int, default=10, help="epochs (default 10)")
    _add_recipe(p)
    p.add_argument("--seed", type=v.seed, default=0, help="subset, head init and batch order seed")
    add_device(p)
    p.add_argument("--out", default=None, type=v.out_stem, help="save the fine-tuned model as "
                   "OUT.safetensors + OUT.json, its per-epoch metrics as OUT.metrics.csv")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    _add_records(p)
    p.set_defaults(func=_finetune)


def _add_recipe(p: argparse.ArgumentParser) -> None:
    """One option per :class:`Recipe` field, typed, bounded and documented by its field spec."""
    g = p.add_argument_group("recipe")
    for name, spec in recipe_fields.specs().items():
        default = recipe_fields.defaults()[name]
        choices = ["on", "off", "auto"] if spec.kind is object else [str(c) for c in spec.choices]
        said = "(default" in spec.help or default is None
        g.add_argument("--" + name.replace("_", "-"), dest=name, type=_recipe_value(name),
                       default=default,
                       metavar="{" + ",".join(choices) + "}" if choices else name.upper(),
                       help=spec.help + ("" if said else f" (default {str(default).lower()})"))


def _recipe_value(name: str):
    """argparse ``type=`` for recipe field ``name``: coerced and checked by its spec."""
    words = {"on": True, "true": True, "off": False, "false": False}

    def parse(text: str):
        spec = recipe_fields.specs()[name]
        value: object = words.get(text.lower(), text) if spec.kind is object else text
        try:
            value = recipe_fields.coerce(name, value)
            spec.check(name, value)
        except ConfigError as err:
            raise argparse.ArgumentTypeError(str(err).removeprefix(f"recipe {name}: ")) from None
        return value

    parse.__name__ = name  # argparse names the type in its messages
    return parse


def _finetune(args: argparse.Namespace) -> int:
    from robust_transfer.data import load_dataset
    from robust_transfer.engine.recipe import Recipe
    from robust_transfer.engine.transfer import finetune
    from robust_transfer.models.checkpoints import refuse_existing, save_model
    from robust_transfer.models.finetune import n_label
    from robust_transfer.models.sources import load_source

    unfrozen = args.unfrozen_blocks
    if args.out:
        refuse_existing(args.out, args.overwrite)
    recipe = Recipe(**{name: getattr(args, name) for name in recipe_fields.specs()})
    model = load_source(args.source)
    record = model.source_record
    train = load_dataset(args.target, "train", args.data_root, args.download)
    test = load_dataset(args.target, "test", args.data_root, args.download)
    with _training_callbacks("finetune", args.out, args.tensorboard) as callback:
        result = finetune(model, train, test, n=args.n, unfrozen=unfrozen, epochs=args.epochs,
                          seed=args.seed, recipe=recipe, device=args.device,
                          source_id=record.sha256 or "", callback=callback)
    summary = {"source": args.source, "target": args.target, "n": result.n_train,
               "unfrozen_blocks": str(unfrozen), "epochs": args.epochs, "seed": args.seed,
               "test_acc": result.test_acc, "seconds": round(result.seconds, 2),
               "cached_prefix": result.cached_prefix}
    if args.out:
        # target, n and seed let influence and saliency pick the images this head saw
        save_model(result.model, args.out, {**summary, "training": "finetune",
                                            "n_requested": n_label(args.n),
                                            "recipe": recipe.to_dict(),
                                            "source_metadata": record.to_dict()},
                   overwrite=args.overwrite)
        _publish_metrics(args.out)
    print(json.dumps(summary) if args.json else
          f"{args.source} -> {args.target}: n={result.n_train} unfrozen={unfrozen} "
          f"epochs={args.epochs} test acc {result.test_acc:.4f} ({result.seconds:.1f}s)")
    return 0


def _register_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help=command_help("evaluate"),
                       description="Clean accuracy and robust accuracy under PGD (default 20 "
                       "steps, step 2.5*eps/steps) on a dataset's test split.")
    p.add_argument("model", help="zoo name or checkpoint path")
    p.add_argument("--dataset", default=None, help="dataset (default: the model's source dataset)")
    add_data_root(p)
    p.add_argument("--norm", choices=["l2", "linf"], default="l2", help="threat model norm")
    p.add_argument("--eps", type=parse_eps, action="append", default=None,
                   help="attack radius; repeat for several (default: clean only)")
    p.add_argument("--steps", type=v.positive_int, default=20, help="PGD steps (default 20)")
    p.add_argument("--images", type=n_images, default=None,
                   help="evaluate on this many test images (class-balanced; default all)")
    p.add_argument("--batch-size", type=v.positive_int, default=256, help="batch size")
    add_device(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_evaluate)


def _evaluate(args: argparse.Namespace) -> int:
    from robust_transfer.data import InputPolicy, balanced_subset, load_dataset
    from robust_transfer.engine.attacks import AttackConfig
    from robust_transfer.engine.training import TensorLoader, evaluate
    from robust_transfer.models.sources import load_source
    from robust_transfer.progress import Progress

    attacks = [AttackConfig(args.norm, eps, args.steps) for eps in args.eps or []]  # checked first
    model = load_source(args.model)
    name = args.dataset or model.source_record.metadata.get("source_dataset")
    if not name:
        raise ConfigError("the checkpoint does not name its dataset; pass --dataset")
    data = load_dataset(name, "test", args.data_root, args.download)
    if data.info.num_classes != model.num_classes:
        raise ConfigError(f"{args.model} has {model.num_classes} classes but {name} has "
                          f"{data.info.num_classes}; evaluate on its source dataset or fine-tune first")
    if args.images:
        data = data.subset(balanced_subset(data.labels.numpy(), args.images, 0, name,  # seeds it
                                           what="test images", option="--images"))
    policy = InputPolicy(model.channels, model.input_size)
    loader = TensorLoader(data.images, data.labels, args.batch_size, transform=policy.prepare)
    with Progress("evaluate clean") as progress:
        rows = [{"eps": 0.0, "accuracy": evaluate(model, loader, None, args.device, progress)[1]}]
    for attack in attacks:
        eps = attack.eps
        with Progress(f"evaluate {args.norm} eps {eps:.4g} PGD-{args.steps}") as progress:
            accuracy = evaluate(model, loader, attack, args.device, progress)[1]
        rows.append({"eps": eps, "norm": args.norm, "steps": args.steps, "accuracy": accuracy})
    if args.json:
        print(json.dumps({"model": args.model, "dataset": name, "images": len(data), "results": rows}))
    else:
        for r in rows:
            label = "clean" if r["eps"] == 0 else f"{r['norm']} eps {r['eps']:.4g} PGD-{r['steps']}"
            print(f"{label:>24}: {r['accuracy']:.4f}")
    return 0

