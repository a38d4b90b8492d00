"""The fine-tuning recipe, described once: each field's type, default, bounds, help and identity.

Every :class:`Recipe` field carries a :class:`FieldSpec` in its dataclass metadata. That
one description drives:

* validation (``Recipe.__post_init__``, so the spec loader and ``finetune`` refuse the
  same values with the same message);
* YAML coercion (:func:`coerce`: YAML 1.1 reads ``1e-3`` as a string and ``1`` as an int);
* run-id stability (:meth:`Recipe.to_dict` leaves out a field at its default when its
  spec says ``in_id_at_default=False``);
* the store's recipe columns (:func:`store_columns`) and their frame types
  (:func:`column_kinds`), the analysis' defaults for fields without a column
  (:func:`defaults`);
* the ``finetune`` command's flags and help (:func:`cli_fields`).

Adding a field is one edit here: a line ``name: type = recipe_field(default, FieldSpec(...))``.
A field added after studies exist must say ``in_id_at_default=False`` so that existing run
ids (which hash :meth:`Recipe.to_dict`) do not change.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

from robust_transfer.engine.choices import NORMS, SCHEDULES
from robust_transfer.errors import ConfigError
from robust_transfer.versions import INPUT_PIPELINE as PIPELINE_VERSION

if TYPE_CHECKING:  # torch stays unimported: the store and `study status` read recipes
    from robust_transfer.engine.attacks import AttackConfig
    from robust_transfer.engine.training import OptimConfig

FEATURE_DTYPES = ("float32", "float16")
HEAD_INITS = ("normal", "paper", "torch")
AUGMENT_CHOICES = (True, False, "auto")


@dataclass(frozen=True)
class FieldSpec:
    """How one recipe field is typed, bounded, documented, identified and stored.

    Attributes:
        kind: the value's type after coercion: ``float``, ``int``, ``str`` or ``object``
            (a field whose values are exactly its ``choices``, such as ``augment``).
        help: one line for ``--help`` and the docs; states the bounds.
        low, high: inclusive bounds of a number (``None``: unbounded on that side).
        high_open: ``high`` itself is excluded.
        low_open: ``low`` itself is excluded.
        choices: the valid values (empty: any value of ``kind`` within the bounds).
        nullable: ``None`` is valid (it means "not set").
        in_id_at_default: the field enters the run id even at its default. Fields added
            after studies existed say ``False``: at their default they are left out of
            :meth:`Recipe.to_dict`, so old run ids stay.
        column: the SQL type of the field's column in the study store (``"REAL"``,
            ``"INTEGER"``, ``"TEXT"``), or ``None`` for none (the value stays in the run's
            config JSON).
        requires: another field that must be set (not ``None``) for this one to leave its
            default (``robust_norm`` means nothing without ``robust_eps``).
    """

    kind: type
    help: str
    low: float | None = None
    high: float | None = None
    high_open: bool = False
    low_open: bool = False
    choices: tuple = ()
    nullable: bool = False
    in_id_at_default: bool = True
    column: str | None = None
    requires: str | None = None

    def bounds_text(self) -> str:
        """``"in [0, 1)"``, ``">= 1"``, ``"one of normal, paper, torch"`` or ``""``."""
        if self.choices:
            return "one of " + ", ".join(_show(c) for c in self.choices)
        if self.low is not None and self.high is not None:
            return (f"in {'(' if self.low_open else '['}{_num(self.low)}, {_num(self.high)}"
                    f"{')' if self.high_open else ']'}")
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {_num(self.low)}"
        return ""

    def check(self, name: str, value: Any) -> None:
        """Raise :class:`ConfigError` (one line naming the field) if ``value`` is not valid."""
        if value is None and self.nullable:
            return
        if self.choices:
            if not any(value == c and type(value) is type(c) for c in self.choices):
                raise ConfigError(f"unknown {name} {value!r}; valid: "
                                  + ", ".join(_show(c) for c in self.choices))
            return
        if self.kind in (int, float):
            ok = (isinstance(value, int if self.kind is int else (int, float))
                  and not isinstance(value, bool) and math.isfinite(value))
            if ok and self.low is not None:
                ok = value > self.low if self.low_open else value >= self.low
            if ok and self.high is not None:
                ok = value < self.high if self.high_open else value <= self.high
            if not ok:
                what = "an integer" if self.kind is int else "a finite number"
                raise ConfigError(f"{name} must be {what} {self.bounds_text()}, got {value!r}")


def recipe_field(default: Any, spec: FieldSpec) -> Any:
    """A dataclass field with its :class:`FieldSpec` (``metadata={"spec": spec}``)."""
    return field(default=default, metadata={"spec": spec})


def _num(x: float) -> str:
    return f"{x:g}"


def _show(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


@dataclass(frozen=True)
class Recipe:
    """The fine-tuning recipe (defaults: the paper's, via the robustness library).

    Each field's type, bounds and meaning are in its :class:`FieldSpec` (``help``);
    :func:`specs` lists them. ``val_images`` holds out class-balanced images of the
    training pool as a validation set (same for every source and seed, disjoint from every
    run's training images); ``robust_eps`` measures, after training, robust accuracy under
    PGD (step size 2.5 * eps / steps, no random start, the robustness library's evaluation
    convention) on ``robust_images`` class-balanced test images.

    The last seven fields are left out of :meth:`to_dict` at their defaults, so adding them
    changed no existing run id. ``input_pipeline`` is set by a study on its runs that may be
    augmented (:func:`robust_transfer.study.spec.expand`), so augmented runs of this version
    never share an id with results computed by the per-image augmentation before it.
    """

    lr: float = recipe_field(0.1, FieldSpec(
        float, "initial learning rate, > 0", low=0, low_open=True, column="REAL"))
    momentum: float = recipe_field(0.9, FieldSpec(
        float, "SGD momentum, in [0, 1) (1 or more never forgets a gradient and diverges)",
        low=0, high=1, high_open=True, column="REAL"))
    weight_decay: float = recipe_field(5e-4, FieldSpec(
        float, "L2 weight decay, in [0, 1] (the paper: 5e-4; at lr 0.1 a decay of 1 already "
        "shrinks every weight by a tenth each step)", low=0, high=1, column="REAL"))
    schedule: str = recipe_field("step", FieldSpec(
        str, "learning-rate schedule: step (/10 at 1/3 and 2/3 of training), cosine or constant",
        choices=SCHEDULES, column="TEXT"))
    batch_size: int = recipe_field(128, FieldSpec(
        int, "examples per step, >= 1", low=1, column="INTEGER"))
    augment: bool | str = recipe_field("auto", FieldSpec(
        object, "train augmentation: auto (colour targets only, as the paper), true or false",
        choices=AUGMENT_CHOICES, column="TEXT"))
    resolution: int | None = recipe_field(None, FieldSpec(
        int, "input size in pixels, 8..4096 (default: the source model's)", low=8, high=4096,
        nullable=True, column="INTEGER"))
    head_init: str = recipe_field("normal", FieldSpec(
        str, "head init: normal N(0,0.01^2), paper N(0,1), torch default", choices=HEAD_INITS,
        column="TEXT"))
    eval_every: int = recipe_field(1, FieldSpec(
        int, "test every this many epochs (and at the last), >= 1", low=1, column="INTEGER"))
    feature_dtype: str = recipe_field("float32", FieldSpec(
        str, "cached prefix outputs: float32 (exact) or float16 (half the bytes)",
        choices=FEATURE_DTYPES, in_id_at_default=False))
    val_images: int = recipe_field(0, FieldSpec(
        int, "class-balanced training images held out as a validation set, >= 0 (0: none)",
        low=0, in_id_at_default=False))
    robust_eps: float | None = recipe_field(None, FieldSpec(
        float, "measure robust accuracy after training under PGD at this radius (pixels in "
        "[0, 1]), > 0 (default: not measured)", low=0, low_open=True, nullable=True,
        in_id_at_default=False))
    robust_norm: str = recipe_field("linf", FieldSpec(
        str, "the robust evaluation's norm: l2 or linf (needs robust_eps)", choices=NORMS,
        in_id_at_default=False, requires="robust_eps"))
    robust_steps: int = recipe_field(20, FieldSpec(
        int, "the robust evaluation's PGD steps, >= 1 (needs robust_eps)", low=1,
        in_id_at_default=False, requires="robust_eps"))
    robust_images: int = recipe_field(500, FieldSpec(
        int, "test images the robust evaluation attacks, >= 1 (needs robust_eps)", low=1,
        in_id_at_default=False, requires="robust_eps"))
    input_pipeline: int | None = recipe_field(None, FieldSpec(
        int, f"the augmentation's version, {PIPELINE_VERSION} (batched draws, "
        "robust_transfer.data.augment); studies set it on runs that may be augmented, so "
        "their ids differ from runs augmented before it (default: not recorded)",
        low=PIPELINE_VERSION, high=PIPELINE_VERSION, nullable=True, in_id_at_default=False))

    def __post_init__(self) -> None:
        for f in fields(self):
            spec: FieldSpec = f.metadata["spec"]
            value = getattr(self, f.name)
            spec.check(f.name, value)
            if spec.requires and getattr(self, spec.requires) is None and value != f.default:
                raise ConfigError(f"{f.name} {_show(value)} is given without {spec.requires}, "
                                  f"which it needs: give {spec.requires} too, or leave "
                                  f"{f.name} out")

    def robust_attack(self) -> AttackConfig:
        """The PGD evaluation attack.

        Raises:
            ConfigError: ``robust_eps`` is not set.
        """
        from robust_transfer.engine.attacks import AttackConfig

        if self.robust_eps is None:
            raise ConfigError("robust accuracy needs robust_eps (the attack's radius)")
        return AttackConfig(self.robust_norm, float(self.robust_eps), self.robust_steps)

    def optim(self) -> OptimConfig:
        from robust_transfer.engine.training import OptimConfig

        return OptimConfig(self.lr, self.momentum, self.weight_decay, self.schedule)

    def to_dict(self) -> dict:
        """The recipe as run ids hash it: fields added later are left out at their default."""
        d = asdict(self)
        for f in fields(self):
            if not f.metadata["spec"].in_id_at_default and d[f.name] == f.default:
                del d[f.name]
        return d


def specs() -> dict[str, FieldSpec]:
    """Each recipe field's :class:`FieldSpec`, in declaration order."""
    return {f.name: f.metadata["spec"] for f in fields(Recipe)}


def defaults() -> dict[str, Any]:
    """Each recipe field's default."""
    return {f.name: f.default for f in fields(Recipe) if f.default is not MISSING}


def optional_defaults() -> dict[str, Any]:
    """Defaults of the fields that enter the run id only when set otherwise."""
    return {name: defaults()[name] for name, s in specs().items() if not s.in_id_at_default}


def store_columns() -> dict[str, str]:
    """Recipe fields with a column in the study store: ``name -> SQL type``."""
    return {name: s.column for name, s in specs().items() if s.column}


def column_kinds() -> dict[str, type]:
    """The Python type of each recipe field's values (``object``: a choice field)."""
    return {name: s.kind for name, s in specs().items()}


def coerce(name: str, value: Any) -> Any:
    """``value`` (as YAML or a CLI read it) as the field's canonical type.

    Strings become numbers (``"1e-3"`` -> ``0.001``), whole floats become ints where the
    field is an int; bounds and choices are checked by :class:`Recipe` itself.

    Raises:
        ConfigError: ``name`` is no recipe field, or ``value`` cannot be its type.
    """
    try:
        spec = specs()[name]
    except KeyError:
        raise ConfigError(f"unknown recipe field {name!r}") from None
    if value is None and spec.nullable:
        return None
    bad = ConfigError(f"recipe {name}: bad value {value!r} (must be {_kind_text(spec)})")
    if spec.kind in (int, float) and (isinstance(value, bool) or value is None):
        raise bad
    try:
        if spec.kind is float:
            return float(value)
        if spec.kind is int:
            if float(value) != int(float(value)):
                raise bad
            return int(value)
    except (TypeError, ValueError, OverflowError):
        raise bad from None
    if spec.kind is str and not isinstance(value, str):
        raise bad
    spec.check(name, value)  # a choice field: unknown choices are listed
    return value


def _kind_text(spec: FieldSpec) -> str:
    what = {float: "a number", int: "an integer", str: "a name"}.get(spec.kind, "a value")
    bounds = spec.bounds_text()
    return f"{what} {bounds}".strip() if bounds else what
