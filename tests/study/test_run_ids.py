"""Run ids are sha256 of RunConfig.to_dict(): pinned values computed before the typed settings.

Stores created by earlier versions must resume with the same ids; these were computed on
main before unfrozen blocks became ``int | ALL`` and ``n`` ``int | None`` end to end.
"""

from __future__ import annotations

import pytest

from robust_transfer.errors import ConfigError
from robust_transfer.models.finetune import ALL, parse_n, parse_unfrozen
from robust_transfer.study.presets import resolve_spec_path
from robust_transfer.study.spec import RunConfig, load_spec, run_set_id


def test_embedded_study_keeps_its_run_ids():
    runs = load_spec(resolve_spec_path("embedded")).runs()
    assert len(runs) == 96
    assert run_set_id([r.run_id for r in runs]) == "4f2dfdf16d2d8544"
    assert (runs[0].run_id, runs[-1].run_id) == ("0b5821d9beb2bfe0", "8e478bf9f5de75dc")
    assert runs[0].to_dict()["unfrozen_blocks"] == "0" and runs[0].to_dict()["n"] == "25"


MNIST_LIKE = ("fmnist", "kmnist", "mnist")


def test_paper_study_keeps_its_unaugmented_run_ids_and_versions_the_augmented_ones():
    """Before the batched augmentation (input pipeline 2) the paper's run set was
    0e36e5a13346ea77; its 3,888 MNIST-like runs (never augmented) keep their ids, the
    3,888 colour runs (augment: auto) carry the pipeline's version and get new ones."""
    runs = load_spec(resolve_spec_path("paper")).runs()
    assert (len(runs), run_set_id([r.run_id for r in runs])) == (7776, "dd09882b25eb0c3e")
    plain = [r for r in runs if r.target in MNIST_LIKE]
    colour = [r for r in runs if r.target not in MNIST_LIKE]
    assert (len(plain), run_set_id([r.run_id for r in plain])) == (3888, "90044298d77970fa")
    assert run_set_id([r.run_id for r in colour]) != "c532088e4c079c34"  # the ids before
    assert all("input_pipeline" not in r.to_dict()["recipe"] for r in plain)
    assert all(r.to_dict()["recipe"]["input_pipeline"] == 2 for r in colour)
    back = RunConfig.from_dict(colour[0].to_dict())
    assert back == colour[0] and back.run_id == colour[0].run_id


def test_a_study_augmented_before_the_version_is_not_resumed_silently(tmp_path, monkeypatch):
    from robust_transfer.errors import RobustTransferError
    from robust_transfer.study import run_study
    from robust_transfer.study import spec as spec_module

    def instant(task, ctx):
        from robust_transfer.study.store import RunOutcome

        return RunOutcome(task.run_id, "finished", 0.0, 1.0, n=30, history=(
            {"epoch": 1, "lr": 0.1, "train_loss": 1.0, "train_acc": 0.5, "test_acc": 0.5},))

    spec = {"name": "aug", "sources": [{"model": "fmnist-natural", "label": "natural"}],
            "targets": ["digits"], "train_images": [30], "unfrozen_blocks": [0], "epochs": 1,
            "seeds": [0], "recipe": {"augment": True}}
    with monkeypatch.context() as m:  # the code before: no version in augmented configs
        m.setattr(spec_module, "versioned", lambda recipe, target: recipe)
        old_ids = {r.run_id for r in load_spec(spec).runs()}
        run_study(spec, tmp_path / "s", run_fn=instant)
    assert not old_ids & {r.run_id for r in load_spec(spec).runs()}
    with pytest.raises(RobustTransferError, match="holds a different study"):
        run_study(spec, tmp_path / "s", run_fn=instant)
    unaugmented = {**spec, "recipe": {"augment": False}}
    with monkeypatch.context() as m:
        m.setattr(spec_module, "versioned", lambda recipe, target: recipe)
        before = {r.run_id for r in load_spec(unaugmented).runs()}
    assert before == {r.run_id for r in load_spec(unaugmented).runs()}


def test_input_pipeline_outside_its_versions_is_refused():
    from robust_transfer.engine.recipe import Recipe

    for bad in (1, 3, "2"):
        with pytest.raises(ConfigError, match="input_pipeline"):
            Recipe(augment=True, input_pipeline=bad)


def test_all_and_int_settings_keep_their_ids_and_types():
    spec = load_spec({"name": "pin", "sources": [{"model": "fmnist-natural", "label": "natural"}],
                      "targets": ["digits"], "train_images": [100, "all"],
                      "unfrozen_blocks": [3, "all"], "epochs": [2], "seeds": [0],
                      "recipe": {"lr": 0.01}})
    got = {(r.n, r.unfrozen_blocks): r.run_id for r in spec.runs()}
    assert got == {(100, 3): "b493db7be1a0f6dc", (100, ALL): "3ce0ff6e506cbc10",
                   (None, 3): "ce2aeaacf371eb7c", (None, ALL): "432aae3e95a5fb0a"}
    for run in spec.runs():
        assert isinstance(run.unfrozen_blocks, int) or run.unfrozen_blocks is ALL
        back = RunConfig.from_dict(run.to_dict())
        assert back == run and back.run_id == run.run_id
        assert back.unfrozen_blocks is run.unfrozen_blocks or back.unfrozen_blocks == run.unfrozen_blocks


@pytest.mark.parametrize("text, value", [("0", 0), ("12", 12), (7, 7), ("all", ALL), (ALL, ALL)])
def test_one_parser_for_unfrozen_blocks(text, value):
    assert parse_unfrozen(text) == value and type(parse_unfrozen(text)) is type(value)


@pytest.mark.parametrize("bad", ["-1", -1, True, "x", 1.5, None, "ALL"])
def test_unfrozen_parser_refuses(bad):
    with pytest.raises(ConfigError, match="non-negative integer or 'all'"):
        parse_unfrozen(bad)


@pytest.mark.parametrize("bad", ["0", 0, -3, False, "many", 2.0])
def test_n_parser_refuses(bad):
    with pytest.raises(ConfigError, match="positive integer or 'all'"):
        parse_n(bad)


def test_n_parser_accepts():
    assert (parse_n("all"), parse_n(None), parse_n("200"), parse_n(200)) == (None, None, 200, 200)
