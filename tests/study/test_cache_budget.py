"""A study's feature cache is planned before any run: too big for its budget is refused up front."""

from __future__ import annotations

import pytest
from study_support import make_sources, write_spec

from robust_transfer.engine.features import CacheBudgetError, disk_bytes
from robust_transfer.engine.transfer import prefix_bytes_per_image
from robust_transfer.errors import ConfigError
from robust_transfer.models import build_architecture
from robust_transfer.study import load_spec, run_study
from robust_transfer.study.cache_budget import check_cache_budget, planned_cache_bytes
from robust_transfer.study.resolve import resolve_study

AXES = """\
    train_images: [30]
    unfrozen_blocks: [0, 1]
    epochs: 1
    seeds: [0]
    recipe: {{lr: 0.05, batch_size: 32, augment: {augment}}}
    """


def _spec(tmp_path, augment="false", extra=""):
    sources = make_sources(tmp_path)
    return write_spec(tmp_path, sources, body=AXES.format(augment=augment) + extra)


@pytest.mark.parametrize("augment", ["false", "true"])
def test_planned_bytes_count_each_key_once(tmp_path, augment):
    resolved = resolve_study(load_spec(_spec(tmp_path, augment)))
    planned = planned_cache_bytes(resolved)
    model = build_architecture("small_resnet", 10, input_size=16)
    per_image = {u: prefix_bytes_per_image(model, u, 16) for u in (0, 1)}
    test = resolved.targets["digits"].test_size
    # the training split holds only the runs' subsets (30 images, one seed)
    splits = {"test": test} if augment == "true" else {"train": 30, "test": test}
    expected = {u: sum(rows * per_image[u] for rows in splits.values()) for u in (0, 1)}
    # 2 sources x 2 depths x (1 or 2) splits keys
    assert len(planned) == 2 * 2 * len(splits)
    assert sum(planned.values()) == 2 * (expected[0] + expected[1])


def test_a_cache_over_budget_is_refused_before_the_study_exists(tmp_path):
    spec = _spec(tmp_path, extra="feature_cache_budget: 100 KB\n")
    out = tmp_path / "study"
    with pytest.raises(CacheBudgetError, match="needs up to .* more than its budget of 97.7 KiB: "
                                               "store prefix outputs as float16"):
        run_study(spec, out)
    assert not out.exists(), "nothing is written for a refused study"
    summary = run_study(spec, out, feature_cache=False)  # caching off: no budget to break
    assert summary.failed == 0 and not (out / "feature_cache").exists()


def test_a_cache_within_budget_runs_and_stays_within_it(tmp_path):
    spec = _spec(tmp_path, extra="feature_cache_budget: 64 MiB\n")
    out = tmp_path / "study"
    summary = run_study(spec, out)
    assert summary.failed == 0
    held = sum(disk_bytes(p) for p in (out / "feature_cache").rglob("data.npy"))  # sparse files
    planned = check_cache_budget(resolve_study(load_spec(spec)), out / "feature_cache")
    # the plan counts data bytes; scattered training rows round up to 4 KiB disk blocks
    assert 0 < held <= 1.1 * planned <= 64 * 2**20


def test_a_bad_budget_names_its_line(tmp_path):
    with pytest.raises(ConfigError, match="line 11: feature_cache_budget: bad byte size 'lots'"):
        load_spec(_spec(tmp_path, extra="feature_cache_budget: lots\n"))
