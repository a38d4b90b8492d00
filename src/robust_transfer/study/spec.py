"""Study specs (YAML) and their expansion into runs with stable ids.

A spec names source models, targets and the values of every grid axis; the runs are the
Cartesian product (of each entry of ``grid``, when given). Example (the ``embedded``
preset, ``robust_transfer/studies/embedded.yaml``, is a complete one)::

    name: demo
    sources:
      - {model: fmnist-natural, label: natural}        # zoo name or checkpoint path
      - {model: ckpt/robust.safetensors, label: l2-eps1, eps: 1, norm: l2}
    targets: [digits]
    train_images: [50, 100, 200, all]                   # "all" = the whole train split
    unfrozen_blocks: [0, 1]                             # 0 = head only, k, or "all"
    epochs: [5]
    seeds: [0, 1, 2]
    recipe: {lr: [0.1, 0.01], batch_size: 64}           # any recipe field may be a list
    resources: {num_cpus: 1, num_gpus: 0.25}            # per run (Ray; threads per run)
    feature_cache: true                                 # share frozen-prefix outputs
    feature_cache_budget: 50 GB                         # optional; refused up front if too small
    executor: slurm                                     # local (default), ray or slurm
    slurm: {partition: gpu, time: "4:00:00", mem: 16G}  # see study.slurm_jobs.SlurmOptions
    device_budget: 8 GiB                                # optional; a run's data on its GPU
    grid:                                               # optional sub-grids; each overrides
      - {train_images: [100, 200], seeds: [0, 1, 2]}    # the axes above, runs are the union
      - {train_images: [all], seeds: [0]}

Recipe fields and defaults are those of :class:`robust_transfer.engine.transfer.Recipe`. With
augmentation on (``augment: true``, or ``auto`` on colour targets) the frozen prefix sees
a different training input every epoch, so those runs cache only their test images'
prefix outputs (see :func:`robust_transfer.engine.transfer.cache_plan`); their accuracy
is unaffected. ``recipe: {feature_dtype: float16}`` halves the cache (a different result,
so a different run id). Runs that may be augmented carry the input pipeline's version
(``input_pipeline``, see :func:`versioned`): augmented results from before the batched
augmentation never share an id with today's. ``device_budget`` bounds the bytes of a
run's data kept on its GPU (default: half its share of the GPU's memory).

A run's id is the sha256 of its fully resolved config (every default filled in, canonical
JSON with sorted keys), so reordering the YAML keeps the ids and changing any value that
affects the result (say the lr) makes a new run. Execution settings (``resources``,
``device``, ``feature_cache``, ``data_root``, ``executor``, ``slurm``) do not enter the id.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field, fields, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

from robust_transfer.engine import recipe as recipe_fields
from robust_transfer.engine.recipe import Recipe
from robust_transfer.errors import ConfigError
from robust_transfer.models.finetune import UnfrozenBlocks, n_label, parse_n, parse_unfrozen
from robust_transfer.models.sources import looks_like_path
from robust_transfer.study.slurm_jobs import SlurmOptions, slurm_options
from robust_transfer.study.yamlio import Lines, load_yaml, read_text

RUN_KIND = "finetune/v1"  # bump when the meaning of a config changes
AXES = ("targets", "train_images", "unfrozen_blocks", "epochs", "seeds")
TOP_KEYS = ("name", "description", "sources", *AXES, "recipe", "grid", "resources", "device",
            "feature_cache", "feature_cache_budget", "device_budget", "data_root", "executor",
            "slurm")
GRID_KEYS = (*AXES, "recipe")
SOURCE_KEYS = ("model", "label", "eps", "norm")
RESOURCE_KEYS = ("num_cpus", "num_gpus")
NORMS = ("l2", "linf", "none")
RECIPE_FIELDS = tuple(f.name for f in fields(Recipe))


@dataclass(frozen=True)
class SourceSpec:
    """A source model of a study.

    Attributes:
        label: the name results use (``natural``, ``l2-eps3``).
        model: a zoo name or a checkpoint path, as written (it enters run ids, so a
            relative path keeps them when the study folder moves).
        eps, norm: the source's training radius and threat model; ``None`` = from the
            checkpoint's metadata.
        line: where the entry is in the spec, for messages.
        location: where to find it: the zoo name, or the path made absolute against the
            spec's folder.
    """

    label: str
    model: str
    eps: float | None = None
    norm: str | None = None
    line: int = 0
    location: str = ""


@dataclass(frozen=True)
class Resources:
    """What one run reserves: CPU threads and a (fraction of a) GPU (Ray schedules by it)."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0

    @property
    def threads(self) -> int:
        return max(1, int(self.num_cpus))


@dataclass(frozen=True)
class RunConfig:
    """One fine-tuning run, fully resolved. Its :attr:`run_id` hashes :meth:`to_dict`.

    Attributes:
        source, source_model: the source's label and its zoo name or path.
        target: the target dataset.
        n: training images, ``None`` for the whole split.
        unfrozen_blocks: blocks trained besides the head, an int or ``ALL``.
        epochs, seed, recipe: the rest of the run.
    """

    source: str
    source_model: str
    target: str
    n: int | None
    unfrozen_blocks: UnfrozenBlocks
    epochs: int
    seed: int
    recipe: Recipe

    def __post_init__(self) -> None:
        # the typed values, whatever spelling came in ("3", "all", 3, ALL)
        object.__setattr__(self, "n", parse_n(self.n))
        object.__setattr__(self, "unfrozen_blocks", parse_unfrozen(self.unfrozen_blocks))

    @property
    def n_label(self) -> str:
        return n_label(self.n)

    def to_dict(self) -> dict[str, Any]:
        """The canonical form run ids hash: never change it for existing settings."""
        return {"kind": RUN_KIND, "source": self.source, "source_model": self.source_model,
                "target": self.target, "n": self.n_label,
                "unfrozen_blocks": str(self.unfrozen_blocks), "epochs": self.epochs,
                "seed": self.seed, "recipe": self.recipe.to_dict()}

    @property
    def run_id(self) -> str:
        return config_id(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        """A config as :meth:`to_dict` (and so the store) writes it."""
        return cls(d["source"], d["source_model"], d["target"], parse_n(d["n"]),
                   parse_unfrozen(d["unfrozen_blocks"]), int(d["epochs"]), int(d["seed"]),
                   Recipe(**d["recipe"]))


def config_id(config: dict[str, Any]) -> str:
    """16 hex digits of the sha256 of ``config`` as canonical JSON."""
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()[:16]


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class Grid:
    """One Cartesian product of axis values."""

    targets: tuple[str, ...]
    train_images: tuple[int | None, ...]
    unfrozen_blocks: tuple[UnfrozenBlocks, ...]
    epochs: tuple[int, ...]
    seeds: tuple[int, ...]
    recipes: tuple[Recipe, ...]
    lines: dict[str, int] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class StudySpec:
    """A parsed, checked study spec (see the module docstring for the format)."""

    name: str
    sources: tuple[SourceSpec, ...]
    grids: tuple[Grid, ...]
    resources: Resources = Resources()
    device: str = "auto"
    feature_cache: bool = True
    data_root: str | None = None
    description: str = ""
    text: str = ""
    path: Path | None = None
    feature_cache_budget: int | None = None  # bytes
    executor: str = "local"
    slurm: SlurmOptions = SlurmOptions()
    # bytes of a run's data (images, labels, cached prefix outputs) kept on its GPU; None:
    # half its share of the GPU's memory (robust_transfer.data.loader.device_budget)
    device_budget: int | None = None

    def runs(self) -> list[RunConfig]:
        """Every run of the study, once each, in a deterministic order."""
        return expand(self)

    def where(self) -> str:
        return str(self.path) if self.path else "study spec"


# --- loading -------------------------------------------------------------------------
def load_spec(spec: str | Path | dict, base_dir: str | Path | None = None) -> StudySpec:
    """Parse and check a study spec.

    Args:
        spec: a YAML file path, a preset name (``embedded``, ``paper``, ``tuning``: see
            ``robust-transfer study presets``), or the spec as a dict.
        base_dir: folder that relative checkpoint paths are relative to (default: the
            spec file's folder, or the working directory).

    Raises:
        ConfigError: neither a file nor a preset, malformed YAML, unknown keys (the valid
            ones listed), bad values; the message gives the spec's line.
    """
    if isinstance(spec, dict):
        import yaml

        text, path = yaml.safe_dump(spec, sort_keys=False), None
    else:
        from robust_transfer.study.presets import resolve_spec_path

        path = resolve_spec_path(spec)
        text = read_text(path)
    where = str(path) if path else "study spec"
    data, lines = load_yaml(text, where)
    parser = _Parser(where, lines)
    base = Path(base_dir) if base_dir else (path.parent if path else Path.cwd())
    return parser.study(data, text, path, base)


class _Parser:
    """Turns YAML data into a :class:`StudySpec`, blaming errors on lines."""

    def __init__(self, where: str, lines: Lines) -> None:
        self.where, self.lines = where, lines

    def fail(self, path: tuple, message: str) -> ConfigError:
        line = self._line(path)
        return ConfigError(f"{self.where}{f' line {line}' if line else ''}: {message}")

    def _line(self, path: tuple) -> int | None:
        while path and path not in self.lines:
            path = path[:-1]
        return self.lines.get(path)

    def keys(self, data: Any, path: tuple, valid: tuple[str, ...], what: str) -> dict:
        if not isinstance(data, dict):
            raise self.fail(path, f"{what} must be a mapping of keys to values")
        for key in data:
            if key not in valid:
                raise self.fail((*path, key), f"unknown key '{key}' in {what}; valid: "
                                f"{', '.join(valid)}")
        return data

    def study(self, data: Any, text: str, path: Path | None, base: Path) -> StudySpec:
        data = self.keys(data if data is not None else {}, (), TOP_KEYS, "the study spec")
        for key in ("sources", "targets"):
            if not data.get(key):
                raise self.fail((), f"the study spec needs '{key}'")
        name = str(data.get("name") or (path.stem if path else "study"))
        grids = self.grids(data)
        return StudySpec(name, self.sources(data["sources"], base), grids,
                         self.resources(data.get("resources")), str(data.get("device", "auto")),
                         self.boolean(data.get("feature_cache", True), ("feature_cache",)),
                         self.optional_text(data.get("data_root"), ("data_root",)),
                         str(data.get("description") or ""), text, path,
                         self.byte_size(data.get("feature_cache_budget"), ("feature_cache_budget",)),
                         self.executor(data.get("executor", "local")), self.slurm(data.get("slurm")),
                         self.byte_size(data.get("device_budget"), ("device_budget",)))

    # --- sources ---------------------------------------------------------------------
    def sources(self, items: Any, base: Path) -> tuple[SourceSpec, ...]:
        if not isinstance(items, list):
            raise self.fail(("sources",), "sources must be a list")
        out = [self.source(item, ("sources", i), base) for i, item in enumerate(items)]
        labels = [s.label for s in out]
        dup = next((x for x in labels if labels.count(x) > 1), None)
        if dup:
            raise self.fail(("sources",), f"source label '{dup}' is used twice; labels must differ")
        return tuple(out)

    def source(self, item: Any, path: tuple, base: Path) -> SourceSpec:
        if isinstance(item, str):
            item = {"model": item}
        item = self.keys(item, path, SOURCE_KEYS, "a source entry")
        if not item.get("model"):
            raise self.fail(path, "a source entry needs 'model': a zoo name or checkpoint path")
        model = self.text(item["model"], (*path, "model"), "model")
        label = self.text(item.get("label") or model, (*path, "label"), "label")
        norm = item.get("norm")
        if norm is not None and norm not in NORMS:
            raise self.fail((*path, "norm"), f"unknown norm '{norm}'; valid: {', '.join(NORMS)}")
        eps = self.eps(item.get("eps"), (*path, "eps"))
        if norm == "none" and eps:
            raise self.fail((*path, "eps"), f"norm none (a natural source) with eps {eps:g}: a "
                            "natural source has eps 0; give the norm it was trained with (l2 or "
                            "linf), or eps: 0")
        return SourceSpec(label, model, eps, norm, self._line(path) or 0,
                          _normalise_model(model, base))

    def text(self, value: Any, path: tuple, what: str) -> str:
        """A scalar written as text (YAML may read ``1`` or ``true``); lists and maps refused."""
        if isinstance(value, (list, dict)) or value is None:
            raise self.fail(path, f"{what} must be a single name, got {value!r}")
        return str(value)

    def eps(self, value: Any, path: tuple) -> float | None:
        if value is None:
            return None
        if isinstance(value, bool):  # YAML reads yes/no/true as booleans: float(True) == 1
            raise self.fail(path, f"eps must be a number or a fraction like 4/255, got {value!r}")
        try:
            eps = float(Fraction(str(value))) if "/" in str(value) else float(value)
        except (ValueError, ZeroDivisionError):
            raise self.fail(path, f"eps must be a number or a fraction like 4/255, got {value!r}") from None
        if not 0 <= eps < float("inf"):  # also refuses .nan and .inf
            raise self.fail(path, f"eps must be a finite number >= 0, got {value}")
        return eps

    # --- axes ------------------------------------------------------------------------
    def grids(self, data: dict) -> tuple[Grid, ...]:
        subs = data.get("grid")
        if subs is None:
            return (self.grid(data, (), {}),)
        if not isinstance(subs, list) or not subs:
            raise self.fail(("grid",), "grid must be a non-empty list of axis overrides")
        out = []
        for i, sub in enumerate(subs):
            sub = self.keys(sub, ("grid", i), GRID_KEYS, "a grid entry")
            out.append(self.grid(data, ("grid", i), sub))
        return tuple(out)

    def grid(self, top: dict, path: tuple, sub: dict) -> Grid:
        def axis(name: str, default: Any) -> tuple[Any, tuple]:
            if name in sub:
                return sub[name], (*path, name)
            return top.get(name, default), (name,)

        values = {name: axis(name, default) for name, default in
                  (("targets", None), ("train_images", ["all"]), ("unfrozen_blocks", [0]),
                   ("epochs", [10]), ("seeds", [0]))}
        recipe = {**self.recipe_dict(top.get("recipe"), ("recipe",)),
                  **self.recipe_dict(sub.get("recipe"), (*path, "recipe"))}
        lines = {k: self._line(p) or 0 for k, (_, p) in values.items()}
        return Grid(self.axis(*values["targets"], _target),
                    self.axis(*values["train_images"], parse_n),
                    self.axis(*values["unfrozen_blocks"], parse_unfrozen),
                    self.axis(*values["epochs"], _positive),
                    self.axis(*values["seeds"], _seed),
                    self.recipes(recipe, path), lines)

    def axis(self, value: Any, path: tuple, convert) -> tuple:
        items = value if isinstance(value, list) else [value]
        if not items:
            raise self.fail(path, f"'{path[-1]}' must list at least one value")
        out = []
        for i, item in enumerate(items):
            try:
                out.append(convert(item))
            except (ValueError, TypeError) as err:  # ConfigError is a ValueError
                raise self.fail((*path, i) if isinstance(value, list) else path,
                                f"{path[-1]}: {_reason(err)}") from None
        return tuple(dict.fromkeys(out))  # drop repeats, keep order

    # --- recipe ----------------------------------------------------------------------
    def recipe_dict(self, data: Any, path: tuple) -> dict[str, tuple[list, tuple]]:
        if data is None:
            return {}
        data = self.keys(data, path, RECIPE_FIELDS, "recipe")
        return {k: (v if isinstance(v, list) else [v], (*path, k)) for k, v in data.items()}

    def recipes(self, values: dict[str, tuple[list, tuple]], path: tuple) -> tuple[Recipe, ...]:
        names = sorted(values)
        columns = [[self.recipe_value(n, v, (*values[n][1], i)) for i, v in enumerate(values[n][0])]
                   for n in names]
        out = []
        for combo in itertools.product(*columns):
            try:
                out.append(Recipe(**dict(zip(names, combo, strict=True))))
            except ConfigError as err:
                raise self.fail(path + ("recipe",) if path else ("recipe",), str(err)) from None
        return tuple(dict.fromkeys(out))

    def recipe_value(self, name: str, value: Any, path: tuple) -> Any:
        try:
            return recipe_fields.coerce(name, value)
        except ConfigError as err:
            raise self.fail(path, str(err)) from None

    # --- the rest --------------------------------------------------------------------
    def resources(self, data: Any) -> Resources:
        if data is None:
            return Resources()
        data = self.keys(data, ("resources",), RESOURCE_KEYS, "resources")
        try:
            res = Resources(**{k: float(v) for k, v in data.items()})
        except (TypeError, ValueError):
            raise self.fail(("resources",), "resources must be numbers") from None
        if not (0 < res.num_cpus < float("inf") and 0 <= res.num_gpus < float("inf")):
            raise self.fail(("resources",), "num_cpus must be a finite number > 0 and num_gpus "
                            f"a finite number >= 0, got {res.num_cpus} and {res.num_gpus}")
        return res

    def executor(self, value: Any) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(("executor",), f"executor must be a name (local, ray, slurm), got {value!r}")
        return value

    def slurm(self, data: Any) -> SlurmOptions:
        if data is None:
            return SlurmOptions()
        if not isinstance(data, dict):
            raise self.fail(("slurm",), "slurm must be a mapping of keys to values")
        try:
            return slurm_options(data)
        except ConfigError as err:
            key = next((k for k in data if f"slurm {k}" in str(err) or f"'{k}'" in str(err)), None)
            raise self.fail(("slurm", key) if key else ("slurm",), str(err)) from None

    def byte_size(self, value: Any, path: tuple) -> int | None:
        from robust_transfer.engine.features import parse_bytes

        try:
            return None if value is None else parse_bytes(value)
        except ConfigError as err:
            raise self.fail(path, f"{path[-1]}: {err}") from None

    def optional_text(self, value: Any, path: tuple) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            raise self.fail(path, f"{path[-1]} must be one folder path, got {value!r}")
        return value

    def boolean(self, value: Any, path: tuple) -> bool:
        if not isinstance(value, bool):
            raise self.fail(path, f"{path[-1]} must be true or false, got {value!r}")
        return value


def _normalise_model(model: str, base: Path) -> str:
    """Zoo names stay; relative checkpoint paths become absolute (against ``base``)."""
    if looks_like_path(model):
        p = Path(model).expanduser()
        return str(p if p.is_absolute() else (base / p).resolve())
    return model


def _target(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"a target is a dataset name, got {value!r}")
    return value


def _reason(err: Exception) -> str:
    """The parser's message without its own subject ("unfrozen blocks must be" -> "must be")."""
    text = str(err)
    return text[text.index("must be"):] if "must be" in text else text


def _positive(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"must be a positive integer, got {value!r}")
    return value


def _seed(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32:
        raise ValueError(f"must be an integer in 0..{2**32 - 1}, got {value!r}")
    return value


# --- expansion -----------------------------------------------------------------------
def expand(spec: StudySpec) -> list[RunConfig]:
    """The runs of ``spec``: the product of each grid, de-duplicated by run id."""
    runs: dict[str, RunConfig] = {}
    for grid in spec.grids:
        for src, target, n, unfrozen, epochs, seed, recipe in itertools.product(
                spec.sources, grid.targets, grid.train_images, grid.unfrozen_blocks,
                grid.epochs, grid.seeds, grid.recipes):
            run = RunConfig(src.label, src.model, target, n, unfrozen, epochs, seed,
                            versioned(recipe, target))
            runs.setdefault(run.run_id, run)
    return list(runs.values())


def versioned(recipe: Recipe, target: str) -> Recipe:
    """``recipe`` with the input pipeline's version when ``target``'s runs may be augmented.

    Augmented runs draw their random numbers the way :mod:`robust_transfer.data.augment`
    does (since version 2), so their results differ from runs augmented before: the
    version enters their config and id. Runs that are never augmented (``augment: false``,
    or ``auto`` on a registered MNIST-like target) keep their ids. ``auto`` on any other
    target (a ``folder:`` target too, decided by name, without reading it) counts as
    augmented.
    """
    from robust_transfer.versions import INPUT_PIPELINE

    augmented = recipe.augment is True or (recipe.augment == "auto" and not _mnist_like(target))
    return replace(recipe, input_pipeline=INPUT_PIPELINE if augmented else None)


def _mnist_like(target: str) -> bool:
    from robust_transfer.data.datasets import DATASETS

    return target in DATASETS and DATASETS.get(target).info.grayscale_like


def run_set_id(run_ids: list[str]) -> str:
    """Identifies a study by the set of its runs: YAML order and comments do not matter."""
    return hashlib.sha256("\n".join(sorted(run_ids)).encode()).hexdigest()[:16]
