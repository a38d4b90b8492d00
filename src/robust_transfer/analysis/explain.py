"""The "why" in the report: influence and saliency outputs, read back and compared.

Reads folders written by ``robust-transfer influence`` (``summary.json`` plus
``<model>/influence.npz``) and ``robust-transfer saliency`` (``summary.json`` plus
``gradients.npz``): found inside a study directory or named by the caller.

The robust-vs-natural class-match difference is tested as a difference: within one
influence folder both models rank the same training images for the same test images, so
each test image gives a paired difference (1, 0 or -1: does the k-th most influential
training image share its class under one model and not the other). With several folders
of the same pair (fine-tuning seeds), each seed's mean difference is one observation and
the interval is a t-interval over seeds; with one folder it is a t-interval over the test
images of that seed (it then says nothing about seed-to-seed variation).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from robust_transfer.analysis.palette import NATURAL_NAMES
from robust_transfer.analysis.palette import source_colors as palette_colors
from robust_transfer.errors import ConfigError

SUMMARY, INFLUENCE_NPZ, GRADIENTS_NPZ = "summary.json", "influence.npz", "gradients.npz"
TOP_RANKS = 10  # ranks of the paired test (the influence outputs keep the top 10 by default)


@dataclass
class InfluenceFolder:
    """One influence output: per model, which training images rank first for each test image.

    Attributes:
        path: the folder.
        sources: model name -> source label (from the replayed runs' configs, else the name).
        seeds: model name -> fine-tuning seed (``None`` when unknown).
        matches: model name -> ``[test images, ranks]`` bool: the rank-r image shares the
            test image's class.
        curves: model name -> ``(share, low, high)`` over ranks 1..max_rank (Wilson 95%).
        chance: share of the most common training class (what a random ranking gives).
        test_key: identifies the test images (their indices, else labels), for pairing.
    """

    path: Path
    sources: dict[str, str]
    seeds: dict[str, int | None]
    matches: dict[str, np.ndarray]
    curves: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]
    chance: float
    test_key: bytes


@dataclass
class SaliencyFolder:
    """One saliency output: gradient magnitudes per model at the model input's size.

    Attributes:
        path: the folder.
        magnitude: model name -> ``[images, H, W]`` gradient magnitude (L2 over channels).
        images: ``[images, H, W]`` or ``[images, H, W, 3]`` in [0, 1], or ``None`` when the
            dataset could not be loaded.
        captions: one per image (its class), or empty.
        sources: model name -> source label.
    """

    path: Path
    magnitude: dict[str, np.ndarray]
    images: np.ndarray | None
    captions: list[str]
    sources: dict[str, str]


@dataclass
class Explanations:
    """Influence and saliency outputs of a study and the paired class-match test.

    Attributes:
        influence: the influence folders read.
        saliency: the saliency folders read.
        paired: one row per (source, rank): ``source, baseline, rank, mean, lo, hi,
            n_seeds, n_images, method, verdict`` (the share of class matches, robust minus
            baseline, as a fraction).
        baseline_model: the baseline's source label.
    """

    influence: list[InfluenceFolder] = field(default_factory=list)
    saliency: list[SaliencyFolder] = field(default_factory=list)
    paired: pd.DataFrame = field(default_factory=pd.DataFrame)
    baseline_model: str | None = None


def find_outputs(root: str | Path, depth: int = 3) -> tuple[list[Path], list[Path]]:
    """Influence and saliency output folders under ``root`` (``root`` itself included)."""
    root = Path(root)
    influence, saliency = [], []
    for summary in sorted(p for d in range(depth + 1) for p in root.glob("/".join(["*"] * d
                                                                                   + [SUMMARY]))):
        folder = summary.parent
        if (folder / GRADIENTS_NPZ).is_file():
            saliency.append(folder)
        elif any(folder.glob(f"*/{INFLUENCE_NPZ}")):
            influence.append(folder)
    return influence, saliency


def _summary(folder: Path, kind: str) -> dict:
    try:
        data = json.loads((folder / SUMMARY).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{folder} is not a {kind} output: cannot read {SUMMARY} ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{folder / SUMMARY} is not a {kind} summary")
    return data


def _run_of(summary: dict, name: str) -> tuple[str, int | None]:
    config = (summary.get("runs") or {}).get(name, {}).get("config", {})
    seed = config.get("seed", summary.get("seed"))
    return str(config.get("source", name)), None if seed is None else int(seed)


def read_influence(folder: str | Path) -> InfluenceFolder:
    """Read one ``robust-transfer influence`` output folder.

    Raises:
        ConfigError: it has no ``summary.json`` or no ``<model>/influence.npz``.
    """
    folder = Path(folder)
    summary = _summary(folder, "influence")
    names = sorted(p.parent.name for p in folder.glob(f"*/{INFLUENCE_NPZ}"))
    if not names:
        raise ConfigError(f"{folder} has no <model>/{INFLUENCE_NPZ}: not an influence output")
    matches, curves, sources, seeds, keys = {}, {}, {}, {}, set()
    chance = float("nan")
    for name in names:
        try:
            with np.load(folder / name / INFLUENCE_NPZ) as data:
                test, train = data["test_labels"], data["train_labels"]
                matches[name] = train[data["top_helpful"][:, :TOP_RANKS]] == test[:, None]
                curves[name] = tuple(data[f"class_match_test_{p}"]
                                     for p in ("share", "low", "high"))
                index = data["test_indices"] if "test_indices" in data.files else test
                keys.add(np.asarray(index).tobytes())
                chance = float(np.bincount(train).max() / len(train))
        except (OSError, ValueError, KeyError) as err:
            raise ConfigError(f"cannot read {folder / name / INFLUENCE_NPZ} ({err}); rerun "
                              "robust-transfer influence for it") from None
        sources[name], seeds[name] = _run_of(summary, name)
    if len(keys) != 1:
        raise ConfigError(f"the models of {folder} were scored on different test images")
    return InfluenceFolder(folder, sources, seeds, matches, curves, chance, keys.pop())


def read_saliency(folder: str | Path) -> SaliencyFolder:
    """Read one ``robust-transfer saliency`` output folder (images from its dataset if loadable).

    Raises:
        ConfigError: no ``summary.json`` or ``gradients.npz``.
    """
    folder = Path(folder)
    summary = _summary(folder, "saliency")
    if not (folder / GRADIENTS_NPZ).is_file():
        raise ConfigError(f"{folder} has no {GRADIENTS_NPZ}: not a saliency output")
    with np.load(folder / GRADIENTS_NPZ) as data:
        models = [m for m in summary.get("models", []) if m in data.files]
        magnitude = {m: np.sqrt((data[m].astype(np.float64) ** 2).sum(axis=1)) for m in models}
        indices = data["indices"]
    images, captions = _dataset_images(summary, indices)
    return SaliencyFolder(folder, magnitude, images, captions,
                          {m: _run_of(summary, m)[0] for m in models})


def _dataset_images(summary: dict, indices: np.ndarray) -> tuple[np.ndarray | None, list[str]]:
    from robust_transfer.data import load_dataset  # loads torch: only when a report shows saliency
    from robust_transfer.errors import RobustTransferError

    try:
        data = load_dataset(summary["dataset"], summary.get("split", "test"))
    except (KeyError, OSError, RobustTransferError):
        return None, []  # the maps are still shown, without the images beside them
    part = data.subset(np.asarray(indices))
    images = part.images.numpy().astype(np.float64)
    images = images / 255.0 if part.images.dtype.is_floating_point is False else images
    shown = images[:, 0] if images.shape[1] == 1 else images.transpose(0, 2, 3, 1)
    return np.clip(shown, 0, 1), [data.info.classes[int(y)] for y in part.labels]


def paired_class_match(folders: list[InfluenceFolder], baseline: str,
                       level: float = 0.95) -> pd.DataFrame:
    """Robust-minus-baseline share of class matches at ranks 1..10, paired by test image.

    Args:
        folders: influence outputs; in each, the model of source ``baseline`` is paired
            with every other model.
        baseline: the baseline's source label.
        level: interval coverage.

    Returns:
        See :attr:`Explanations.paired`; empty when no folder has the baseline.
    """
    from scipy import stats as sps

    per_seed = []
    for folder in folders:
        base = [m for m, s in folder.sources.items() if s == baseline]
        if not base:
            continue
        ref = folder.matches[base[0]].astype(float)
        for model, src in folder.sources.items():
            if src == baseline:
                continue
            diff = folder.matches[model].astype(float) - ref  # [images, ranks]
            per_seed.append({"source": src, "seed": folder.seeds.get(model), "diff": diff})
    rows = []
    for source in dict.fromkeys(r["source"] for r in per_seed):
        diffs = [r["diff"] for r in per_seed if r["source"] == source]
        if len(diffs) >= 2:
            obs = np.stack([d.mean(axis=0) for d in diffs])  # [seeds, ranks]
            per_seed_top1 = ", ".join(f"{100 * v:+.1f}" for v in obs[:, 0])
            method = (f"t over {len(diffs)} fine-tuning seeds, whose top-1 differences are "
                      f"{per_seed_top1} points")
            images = diffs[0].shape[0]
        else:
            obs, method, images = diffs[0], "t over test images (one seed)", diffs[0].shape[0]
        k = len(obs)
        mean, sd = obs.mean(axis=0), obs.std(axis=0, ddof=1)
        half = sps.t.ppf((1 + level) / 2, k - 1) * sd / np.sqrt(k)
        for r in range(obs.shape[1]):
            lo, hi = mean[r] - half[r], mean[r] + half[r]
            verdict = "higher" if lo > 0 else "lower" if hi < 0 else "no clear difference"
            rows.append({"source": source, "baseline": baseline, "rank": r + 1,
                         "mean": mean[r], "lo": lo, "hi": hi, "n_seeds": len(diffs),
                         "n_images": images, "method": method, "verdict": verdict})
    return pd.DataFrame(rows)


def load_explanations(influence: list[Path], saliency: list[Path], baseline: str,
                      level: float = 0.95) -> Explanations | None:
    """Read the given output folders and test the class-match difference (``None`` if none)."""
    if not influence and not saliency:
        return None
    inf = [read_influence(p) for p in influence]
    sal = [read_saliency(p) for p in saliency]
    base = baseline
    labels = {s for f in inf for s in f.sources.values()}
    if baseline not in labels:  # outputs made with --checkpoint name their models freely
        base = next((s for s in sorted(labels) if s.lower() in NATURAL_NAMES), baseline)
    return Explanations(inf, sal, paired_class_match(inf, base, level), base)


def paired_sentence(paired: pd.DataFrame, names: dict[str, str], percent: str = "95%"
                    ) -> list[str]:
    """One sentence per source on the top-1 class-match difference (``percent``: the level
    the interval was computed at)."""
    lines = []
    for _, r in paired[paired["rank"] == 1].iterrows():
        name, base = names.get(r["source"], r["source"]), names.get(r["baseline"], r["baseline"])
        word = {"higher": "higher than", "lower": "lower than",
                "no clear difference": "not clearly different from"}[r["verdict"]]
        lines.append(f"Top-1 class match of {name} is {word} {base}'s: {100 * r['mean']:+.1f} "
                     f"points, {percent} CI {100 * r['lo']:+.1f} to {100 * r['hi']:+.1f} (paired over "
                     f"the same {r['n_images']} test images; {r['method']}).")
    return lines


# --- figures ----------------------------------------------------------------------------
def _colors(labels: list[str], baseline: str | None, order: list[str]) -> dict[str, str]:
    # every source of the study keeps its slot, so colours match the other figures
    return palette_colors([*order, *(s for s in labels if s not in order)], baseline)


def class_match_figure(exp: Explanations, names: dict[str, str], order: list[str]) -> Figure:
    """Share of class matches against rank (left) and the paired difference (right)."""
    labels = sorted({s for f in exp.influence for s in f.sources.values()})
    colors = _colors(labels, exp.baseline_model, order)
    fig = Figure(figsize=(11, 3.6), dpi=100)
    left, right = fig.subplots(1, 2)
    for folder in exp.influence:
        for model, src in folder.sources.items():
            share, low, high = folder.curves[model]
            ranks = np.arange(1, len(share) + 1)
            left.plot(ranks, 100 * share, color=colors[src], lw=1.4,
                      label=names.get(src, src) if folder is exp.influence[0] else None)
            if len(exp.influence) == 1:
                left.fill_between(ranks, 100 * low, 100 * high, color=colors[src], alpha=0.12, lw=0)
    left.axhline(100 * exp.influence[0].chance, color="#888888", ls="--", lw=0.8, label="chance")
    left.set(xlabel="rank k of the influential training image", ylim=(0, 101),
             ylabel="same class as test image (%)")
    left.set_title("class match by rank" + (f" ({len(exp.influence)} influence runs, one line "
                                             "each)" if len(exp.influence) > 1 else
                                             ", 95% Wilson bands"), fontsize=10)
    left.legend(fontsize=8.5, frameon=False)
    for source, part in exp.paired.groupby("source", sort=False):
        right.plot(part["rank"], 100 * part["mean"], color=colors[source], marker="o", ms=3,
                   label=names.get(source, source))
        right.fill_between(part["rank"], 100 * part["lo"], 100 * part["hi"], color=colors[source],
                           alpha=0.12, lw=0)
    right.axhline(0, color="#888888", ls="--", lw=0.8)
    base = names.get(exp.baseline_model or "", exp.baseline_model)
    right.set(xlabel="rank k", ylabel=f"minus {base} (points)")
    right.set_title(f"paired difference from {base}, 95% interval", fontsize=10)
    if len(exp.paired):
        right.legend(fontsize=8.5, frameon=False)
    for ax in (left, right):
        ax.grid(alpha=0.3, lw=0.5)
        ax.tick_params(labelsize=9)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.15, top=0.9, wspace=0.22)
    return fig


def saliency_figure(folder: SaliencyFolder, names: dict[str, str], order: list[str],
                    baseline: str | None) -> Figure:
    """Greyscale gradient magnitude per model (columns) and image (rows), at input size."""
    rank = {s: i for i, s in enumerate(order)}
    models = sorted(folder.magnitude, key=lambda m: rank.get(folder.sources[m], len(rank)))
    colors = _colors([folder.sources[m] for m in models], baseline, order)
    cols = len(models) + (folder.images is not None)
    rows = len(next(iter(folder.magnitude.values())))
    fig = Figure(figsize=(min(11, 1.5 * cols + 0.8), 1.5 * rows + 0.5), dpi=100)
    axes = fig.subplots(rows, cols, squeeze=False)
    for r in range(rows):
        column = 0
        if folder.images is not None:
            img = folder.images[r]
            axes[r, 0].imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1,
                              interpolation="nearest")
            if folder.captions:
                axes[r, 0].set_ylabel(folder.captions[r], fontsize=9)
            column = 1
        for j, model in enumerate(models):
            mag = folder.magnitude[model][r]
            top = np.quantile(mag, 0.99) or 1.0
            axes[r, column + j].imshow(np.clip(mag / top, 0, 1), cmap="gray", vmin=0, vmax=1,
                                       interpolation="nearest")
    for j, model in enumerate(models):
        src = folder.sources[model]
        axes[0, column + j].set_title(names.get(src, model), fontsize=9.5, color=colors[src],
                                      fontweight="bold")
    if folder.images is not None:
        axes[0, 0].set_title("image", fontsize=9.5)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    h, w = next(iter(folder.magnitude.values())).shape[1:]
    fig.suptitle(f"input-gradient magnitude (white = large), {h}x{w} px as the model sees it",
                 fontsize=10, y=1 - 0.12 / fig.get_figheight())
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.02, top=1 - 0.62 / fig.get_figheight(),
                        wspace=0.05, hspace=0.08)
    return fig
