"""The recipe described once: its field specs drive validation, coercion, run ids, the store.

And the one feature-cache key type, whose digests are those existing caches were filed under.
"""

from __future__ import annotations

import dataclasses
import sqlite3

import pytest

from robust_transfer.engine import recipe as recipe_fields
from robust_transfer.engine.features import PrefixKey, key_digest
from robust_transfer.engine.recipe import FieldSpec, Recipe, recipe_field
from robust_transfer.errors import ConfigError
from robust_transfer.study.spec import RunConfig
from robust_transfer.study.store import RECIPE_COLUMNS, StudyStore, run_row


def test_every_field_has_a_spec_whose_default_it_accepts():
    specs = recipe_fields.specs()
    assert list(specs) == [f.name for f in dataclasses.fields(Recipe)]
    for name, spec in specs.items():
        assert spec.help and isinstance(spec, FieldSpec)
        spec.check(name, recipe_fields.defaults()[name])  # the default is valid
    assert RECIPE_COLUMNS == ("lr", "momentum", "weight_decay", "schedule", "batch_size",
                              "augment", "resolution", "head_init", "eval_every")
    assert set(recipe_fields.optional_defaults()) == {
        "feature_dtype", "val_images", "robust_eps", "robust_norm", "robust_steps", "robust_images",
        "input_pipeline"}


@pytest.mark.parametrize("name,value,coerced", [
    ("lr", "1e-3", 0.001), ("momentum", 0, 0.0), ("batch_size", 32.0, 32),
    ("resolution", None, None), ("robust_eps", "0.25", 0.25), ("augment", False, False)])
def test_yaml_values_become_the_fields_types(name, value, coerced):
    out = recipe_fields.coerce(name, value)
    assert out == coerced and type(out) is type(coerced)


@pytest.mark.parametrize("name,value,message", [
    ("batch_size", 1.5, "recipe batch_size: bad value 1.5 \\(must be an integer >= 1\\)"),
    ("lr", True, "recipe lr: bad value True"),
    ("head_init", "zeros", "unknown head_init 'zeros'; valid: normal, paper, torch"),
    ("augment", "maybe", "unknown augment 'maybe'; valid: true, false, auto"),
    ("nonsense", 1, "unknown recipe field 'nonsense'")])
def test_bad_yaml_values_are_one_line(name, value, message):
    with pytest.raises(ConfigError, match=message):
        recipe_fields.coerce(name, value)


@pytest.mark.parametrize("kwargs,message", [
    ({"momentum": 5}, r"momentum must be a finite number in \[0, 1\), got 5"),
    ({"weight_decay": 1e9}, r"weight_decay must be a finite number in \[0, 1\]"),
    ({"robust_norm": "l3", "robust_eps": 0.1}, "unknown robust_norm 'l3'; valid: l2, linf"),
    ({"robust_steps": 5}, "robust_steps 5 is given without robust_eps"),
    ({"robust_norm": "l2"}, "robust_norm l2 is given without robust_eps")])
def test_out_of_range_and_orphan_options_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        Recipe(**kwargs)


def test_a_field_added_with_in_id_at_default_false_keeps_old_run_ids():
    """What adding a field looks like: one line; at its default, the run id is unchanged."""

    @dataclasses.dataclass(frozen=True)
    class Extended(Recipe):
        pipeline: int = recipe_field(1, FieldSpec(int, "input pipeline version, >= 1", low=1,
                                                  in_id_at_default=False))

    specs = {f.name: f.metadata["spec"] for f in dataclasses.fields(Extended)}
    assert not specs["pipeline"].in_id_at_default
    with pytest.raises(ConfigError, match="pipeline must be an integer >= 1"):
        Extended(pipeline=0)
    assert Extended(lr=0.05).to_dict() == Recipe(lr=0.05).to_dict()  # same run id at default
    assert Extended(lr=0.05, pipeline=2).to_dict() == {**Recipe(lr=0.05).to_dict(), "pipeline": 2}


def test_store_gains_a_missing_recipe_column_filled_from_the_configs(tmp_path):
    run = RunConfig("a", "m", "digits", 10, 0, 1, 0, Recipe(eval_every=3, augment=False))
    with StudyStore(tmp_path, create=True) as store:
        spec_id = store.add_spec("x", 1, "s", "")
        store.plan([run_row(run.to_dict(), {"eps": 0.0, "norm": "l2"})], spec_id)
    with sqlite3.connect(tmp_path / "study.db") as conn:  # as a store before the column existed
        conn.execute("ALTER TABLE runs DROP COLUMN eval_every")
        conn.execute("ALTER TABLE runs DROP COLUMN augment")
    with StudyStore(tmp_path) as store:
        row = store.conn.execute("SELECT eval_every, augment FROM runs").fetchone()
    assert tuple(row) == (3, "false")


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_prefix_key_digests_are_those_existing_caches_use(dtype):
    key = PrefixKey("ab" * 32, "digits", "test", 16, 4, True, dtype)
    old = {"source": "ab" * 32, "dataset": "digits", "resolution": 16, "depth": 4,
           "pooled": True, "split": "test", **({"dtype": dtype} if dtype != "float32" else {})}
    assert key.digest() == key_digest(old)  # the dict the engine built before PrefixKey
    assert PrefixKey.from_dict(old) == key
    with pytest.raises(ConfigError, match="lacks depth"):
        PrefixKey.from_dict({k: v for k, v in old.items() if k != "depth"})
