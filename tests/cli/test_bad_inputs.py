"""The bad-input table: every case is refused before work starts, in one line, leaving nothing.

Each case runs the CLI in this process (``robust_transfer.cli.main``) and must exit 2 with
exactly one stderr line starting ``error:``, no traceback, and no file created, changed or
removed: neither in the case's own ``tmp_path`` (where outputs would go) nor among the
shared fixtures (checkpoint, study, specs, CSVs). A case that were accepted would start
training or write files, and fail here.
"""

from __future__ import annotations

import re
import shlex
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from robust_transfer.cli import main
from robust_transfer.models import build_architecture, save_model

# --- the table -----------------------------------------------------------------------
# {tmp}: the case's empty tmp_path; {fx}: the shared fixture folder; {ckpt}: a checkpoint;
# {ckpt_head}: a checkpoint fine-tuned head-only (as `finetune --out` records it);
# {study}: a finished study; {spec}: a valid spec; {file}: an existing regular file.
PRETRAIN = "pretrain --dataset digits --epochs 1 --out {tmp}/m"
FINETUNE = "finetune {ckpt} --target digits --epochs 1"
EVALUATE = "evaluate {ckpt} --dataset digits"
RUN = "study run {spec} --out {tmp}/s"
INFLUENCE = "influence -c {ckpt} --dataset digits --out {tmp}/inf"
SALIENCY = "saliency -c {ckpt} --dataset digits --out {tmp}/sal"
ANALYZE = "analyze {study} --out {tmp}/a --no-figures"
ANALYZE_CSV = "analyze --csv {fx}/ok.csv --out {tmp}/a --no-figures"

# folder targets, each broken one way (made by _image_folders)
IMAGE_CASES = ("truncated", "bomb", "huge", "int32", "float", "unseen_test_class",
               "empty_train_class", "one_class")
NAN_INF = ["nan", "inf", "-inf", "NaN"]
NOT_NUMBER = ["abc", ""]
POS_FLOAT_BAD = NAN_INF + NOT_NUMBER + ["0", "-1"]
NONNEG_FLOAT_BAD = NAN_INF + NOT_NUMBER + ["-0.5"]
POS_INT_BAD = ["0", "-3", "1.5", "x"]
SEED_BAD = ["-1", "4294967296", "x", "0.5"]
DEVICE_BAD = ["bogus", "cuda:99", "gpu", "cuda:x", "auto:1"] + (
    [] if torch.cuda.is_available() else ["cuda", "cuda:0"])


def _flag_cases(base: str, flag: str, values: list[str]) -> list[tuple[str, str]]:
    return [(f"{base.split()[0]}-{flag.strip('-')}={v or 'empty'}",
             f"{base} {flag}={shlex.quote(v)}") for v in values]


CASES: list[tuple[str, str]] = [
    # pretrain: optimiser, attack, sizes, seed, device, output
    *_flag_cases(PRETRAIN, "--lr", POS_FLOAT_BAD),
    *_flag_cases(PRETRAIN, "--momentum", ["nan", "inf", "-0.1"]),
    *_flag_cases(PRETRAIN, "--weight-decay", ["nan", "inf", "-1"]),
    *_flag_cases(PRETRAIN, "--eps", ["nan", "inf", "-1", "1/0", "x", "-8/255"]),
    *_flag_cases(PRETRAIN, "--attack-step-size", ["0", "nan", "inf", "-1"]),
    *_flag_cases(PRETRAIN, "--attack-steps", ["0", "-1"]),
    *_flag_cases(PRETRAIN, "--epochs", POS_INT_BAD),
    *_flag_cases(PRETRAIN, "--batch-size", ["0", "-5"]),
    *_flag_cases(PRETRAIN, "--input-size", ["100000", "4", "0", "-1"]),
    *_flag_cases(PRETRAIN, "--seed", SEED_BAD),
    *_flag_cases(PRETRAIN, "--workers", ["-3", "x"]),
    *_flag_cases(PRETRAIN, "--device", DEVICE_BAD),
    *_flag_cases(PRETRAIN, "--train-images", ["0", "-1", "some"]),
    *_flag_cases(PRETRAIN, "--eval-images", ["0"]),
    ("pretrain-arch", f"{PRETRAIN} --arch bogus"),
    ("pretrain-norm", f"{PRETRAIN} --norm l3"),
    ("pretrain-attack", f"{PRETRAIN} --attack cw"),
    ("pretrain-dataset", "pretrain --dataset bogus --epochs 1 --out {tmp}/m"),
    ("pretrain-out-under-file", "pretrain --dataset digits --out {file}/m"),
    ("pretrain-out-unwritable", "pretrain --dataset digits --out /proc/rt-nope/m"),
    ("pretrain-out-folder", "pretrain --dataset digits --out {tmp}/"),
    ("pretrain-out-exists", "pretrain --dataset digits --out {fx}/src"),
    ("pretrain-out-missing", "pretrain --dataset digits"),
    # finetune
    *_flag_cases(FINETUNE, "--lr", ["nan", "inf", "0", "-1"]),
    *_flag_cases(FINETUNE, "--momentum", ["-1", "nan", "5", "1"]),
    *_flag_cases(FINETUNE, "--weight-decay", ["inf", "1e9"]),
    *_flag_cases(FINETUNE, "--robust-norm", ["l3", "l2"]),  # l2: valid, but without --robust-eps
    *_flag_cases(FINETUNE, "--robust-steps", ["-4", "5"]),  # 5: valid, but without --robust-eps
    ("finetune-robust-eps-bad-steps", f"{FINETUNE} --robust-eps 0.1 --robust-steps 0"),
    *_flag_cases(FINETUNE, "--n", ["0", "-5", "x"]),
    *_flag_cases(FINETUNE, "--unfrozen-blocks", ["-1", "x", "1.5"]),
    *_flag_cases(FINETUNE, "--epochs", ["0", "-2"]),
    *_flag_cases(FINETUNE, "--resolution", ["100000", "4", "x"]),
    *_flag_cases(FINETUNE, "--seed", ["-1", "x"]),
    *_flag_cases(FINETUNE, "--device", ["bogus", "cuda:99"]),
    *_flag_cases(FINETUNE, "--batch-size", ["0"]),
    ("finetune-head-init", f"{FINETUNE} --head-init zeros"),
    ("finetune-augment", f"{FINETUNE} --augment maybe"),
    ("finetune-schedule", f"{FINETUNE} --schedule linear"),
    ("finetune-target", "finetune {ckpt} --target bogus --epochs 1"),
    ("finetune-source-missing", "finetune {tmp}/none.safetensors --target digits"),
    ("finetune-out-under-file", f"{FINETUNE} --out {{file}}/m"),
    ("finetune-out-unwritable", f"{FINETUNE} --out /proc/rt-nope/m"),
    ("finetune-out-exists", f"{FINETUNE} --out {{fx}}/src"),
    ("finetune-too-many-blocks", f"{FINETUNE} --unfrozen-blocks 99"),
    ("finetune-n-too-large", f"{FINETUNE} --n 100000"),
    # evaluate
    *_flag_cases(EVALUATE, "--eps", ["nan", "inf", "-1", "x"]),
    *_flag_cases(EVALUATE, "--steps", ["0", "-1"]),
    *_flag_cases(EVALUATE, "--images", ["0"]),
    *_flag_cases(EVALUATE, "--batch-size", ["0", "-1"]),
    *_flag_cases(EVALUATE, "--device", ["bogus"]),
    ("evaluate-norm", f"{EVALUATE} --norm l1"),
    ("evaluate-dataset-unknown", "evaluate {ckpt} --dataset fmnist-missing"),
    # study run
    *_flag_cases(RUN, "--workers", ["0", "-3", "x"]),
    *_flag_cases(RUN, "--cpus-per-run", ["nan", "inf", "0", "-1"]),
    *_flag_cases(RUN, "--gpus-per-run", ["nan", "-1", "inf"]),
    *_flag_cases(RUN, "--device-budget", ["lots", "0", "-8GiB", "8 parsecs", ""]),
    *_flag_cases(RUN, "--device", ["bogus", "gpu"] + ([] if torch.cuda.is_available() else ["cuda"])),
    ("run-out-is-file", "study run {spec} --out {file}"),
    ("run-out-under-file", "study run {spec} --out {file}/s"),
    ("run-out-unwritable", "study run {spec} --out /proc/rt-nope"),
    ("run-executor", f"{RUN} --executor slurm"),
    ("run-spec-missing", "study run {tmp}/none.yaml --out {tmp}/s"),
    ("run-spec-eps-nan", "study run {fx}/eps_nan.yaml --out {tmp}/s"),
    ("run-spec-eps-inf", "study run {fx}/eps_inf.yaml --out {tmp}/s"),
    ("run-spec-cpus-nan", "study run {fx}/cpus_nan.yaml --out {tmp}/s"),
    ("run-spec-gpus-negative", "study run {fx}/gpus_neg.yaml --out {tmp}/s"),
    ("run-spec-device-budget-word", "study run {fx}/device_budget_word.yaml --out {tmp}/s"),
    ("run-spec-device-budget-zero", "study run {fx}/device_budget_zero.yaml --out {tmp}/s"),
    ("run-spec-device-budget-negative", "study run {fx}/device_budget_neg.yaml --out {tmp}/s"),
    ("run-spec-input-pipeline-1", "study run {fx}/input_pipeline_1.yaml --out {tmp}/s"),
    ("run-spec-cpus-negative", "study run {fx}/cpus_neg.yaml --out {tmp}/s"),
    ("run-spec-lr-inf", "study run {fx}/lr_inf.yaml --out {tmp}/s"),
    ("run-spec-lr-nan", "study run {fx}/lr_nan.yaml --out {tmp}/s"),
    ("run-spec-eval-every-0", "study run {fx}/eval0.yaml --out {tmp}/s"),
    ("run-spec-momentum-5", "study run {fx}/momentum5.yaml --out {tmp}/s"),
    ("run-spec-weight-decay-1e9", "study run {fx}/wd_huge.yaml --out {tmp}/s"),
    ("run-spec-head-init-zeros", "study run {fx}/head_zeros.yaml --out {tmp}/s"),
    ("run-spec-robust-norm-l3", "study run {fx}/robust_l3.yaml --out {tmp}/s"),
    ("run-spec-robust-steps-without-eps", "study run {fx}/robust_steps.yaml --out {tmp}/s"),
    ("run-spec-robust-norm-without-eps", "study run {fx}/robust_norm.yaml --out {tmp}/s"),
    ("run-spec-resolution", "study run {fx}/res_big.yaml --out {tmp}/s"),
    ("run-spec-device", "study run {fx}/device_bogus.yaml --out {tmp}/s"),
    ("run-spec-seed-negative", "study run {fx}/seed_neg.yaml --out {tmp}/s"),
    ("run-spec-malformed", "study run {fx}/malformed.yaml --out {tmp}/s"),
    ("run-other-study", "study run {fx}/other.yaml --out {study}"),
    # study status / export / repair
    ("status-missing", "study status {tmp}/none"),
    ("status-file", "study status {file}"),
    ("status-garbage", "study status {fx}/garbage"),
    ("export-out-is-file", "study export {study} --out {file}"),
    ("export-out-unwritable", "study export {study} --out /proc/rt-nope"),
    ("export-format", "study export {study} --format xlsx --out {tmp}/x"),
    ("export-missing", "study export {tmp}/none --out {tmp}/x"),
    ("export-garbage", "study export {fx}/garbage --out {tmp}/x"),
    ("repair-out-is-file", "study repair {fx}/garbage --out {file}"),
    ("repair-out-used", "study repair {fx}/garbage --out {fx}"),
    ("repair-garbage", "study repair {fx}/garbage --out {tmp}/r"),
    ("repair-missing", "study repair {tmp}/none --out {tmp}/r"),
    # analyze
    *_flag_cases(ANALYZE, "--level", ["0", "1", "nan", "1.5", "-0.5"]),
    *_flag_cases(ANALYZE, "--epochs", ["0", "-1", "999", "x"]),
    *_flag_cases(ANALYZE, "--unfrozen", ["99", "x", "-1"]),
    ("analyze-ci", f"{ANALYZE} --ci wild"),
    ("analyze-out-is-file", "analyze {study} --out {file}"),
    ("analyze-out-unwritable", "analyze {study} --out /proc/rt-nope"),
    ("analyze-neither", "analyze --out {tmp}/a"),
    ("analyze-both", "analyze {study} --csv {fx}/ok.csv --out {tmp}/a"),
    ("analyze-missing-dir", "analyze {tmp}/none --out {tmp}/a"),
    ("analyze-garbage", "analyze {fx}/garbage --out {tmp}/a"),
    ("analyze-spec-missing", f"{ANALYZE} --spec {{tmp}}/none.yaml"),
    ("analyze-baseline", f"{ANALYZE} --baseline nobody"),
    ("analyze-csv-missing", "analyze --csv {tmp}/none.csv --out {tmp}/a"),
    ("analyze-csv-duplicate-column", "analyze --csv {fx}/dup.csv --out {tmp}/a"),
    ("analyze-csv-text-acc", "analyze --csv {fx}/text.csv --out {tmp}/a"),
    ("analyze-csv-missing-column", "analyze --csv {fx}/lacking.csv --out {tmp}/a"),
    ("analyze-csv-percent", "analyze --csv {fx}/percent.csv --out {tmp}/a"),
    ("analyze-csv-unfrozen", f"{ANALYZE_CSV} --unfrozen 7"),
    ("analyze-csv-epochs", f"{ANALYZE_CSV} --epochs 999"),
    # demo
    *_flag_cases("demo --out {tmp}/d", "--workers", ["-3", "0", "x"]),
    *_flag_cases("demo --out {tmp}/d", "--device", ["bogus"] + ([] if torch.cuda.is_available() else ["cuda"])),
    ("demo-out-is-file", "demo --out {file}"),
    ("demo-out-unwritable", "demo --out /proc/rt-nope"),
    ("demo-spec-missing", "demo --spec {tmp}/none.yaml --out {tmp}/d"),
    # influence
    ("influence-grid-0-0", f"{INFLUENCE} --grid 0 0"),
    ("influence-grid-negative", f"{INFLUENCE} --grid -1 2"),
    ("influence-grid-one", f"{INFLUENCE} --grid 3"),
    *_flag_cases(INFLUENCE, "--damping", ["nan", "-1", "inf"]),
    *_flag_cases(INFLUENCE, "--rcond", ["nan", "2", "-1"]),
    *_flag_cases(INFLUENCE, "--top-k", ["0", "-2"]),
    *_flag_cases(INFLUENCE, "--max-rank", ["0", "-1"]),
    *_flag_cases(INFLUENCE, "--batch-size", ["0"]),
    *_flag_cases(INFLUENCE, "--cg-tol", ["0", "nan"]),
    *_flag_cases(INFLUENCE, "--cg-max-iter", ["0"]),
    *_flag_cases(INFLUENCE, "--cg-batch", ["0"]),
    *_flag_cases(INFLUENCE, "--memory-limit-gb", ["nan", "0", "-1"]),
    *_flag_cases(INFLUENCE, "--seed", ["-1"]),
    *_flag_cases(INFLUENCE, "--n", ["0"]),
    *_flag_cases(INFLUENCE, "--test-n", ["0", "-1"]),
    ("influence-solver", f"{INFLUENCE} --solver magic"),
    ("influence-out-is-file", "influence -c {ckpt} --dataset digits --out {file}"),
    ("influence-out-exists", "influence -c {ckpt} --dataset digits --out {fx}"),
    ("influence-checkpoint-missing", "influence -c {tmp}/none.safetensors --dataset digits --out {tmp}/inf"),
    ("influence-no-dataset", "influence -c {ckpt} --out {tmp}/inf"),
    ("influence-dataset-bogus", "influence -c {ckpt} --dataset bogus --out {tmp}/inf"),
    ("influence-no-source", "influence --dataset digits --out {tmp}/inf"),
    ("influence-run-without-study", "influence --run abc --out {tmp}/inf"),
    ("influence-run-unknown", "influence --study {study} --run zzzz --out {tmp}/inf"),
    ("influence-through-blocks-head-only", "influence -c {ckpt_head} --through blocks --out {tmp}/inf"),
    ("influence-through-bogus", f"{INFLUENCE} --through everything"),
    ("influence-blocks-damping", f"{INFLUENCE} --through blocks --blocks-damping 0"),
    ("influence-duplicate-names", "influence -c a={ckpt} -c a={ckpt} --dataset digits --out {tmp}/inf"),
    # lds
    *_flag_cases("lds --study {study} --run x --out {tmp}/lds", "--fraction",
                 ["0", "1", "1.5", "-0.5", "nan", "x"]),
    ("lds-subsets-0", "lds --study {study} --run x --subsets 0 --out {tmp}/lds"),
    ("lds-method", "lds --study {study} --run x --method magic --out {tmp}/lds"),
    ("lds-run-unknown", "lds --study {study} --run zzzz --out {tmp}/lds"),
    ("lds-out-exists", "lds --study {study} --run x --out {fx}"),
    # saliency
    ("saliency-method", f"{SALIENCY} --method magic"),
    ("saliency-baseline-shape", f"{SALIENCY} --method integrated-gradients --baseline {{fx}}/baseline.npy"),
    ("saliency-baseline-grey", f"{SALIENCY} --method integrated-gradients --baseline 2"),
    ("saliency-baseline-nan", f"{SALIENCY} --method integrated-gradients --baseline nan"),
    ("saliency-baseline-missing", f"{SALIENCY} --method integrated-gradients --baseline {{tmp}}/b.npy"),
    ("saliency-baseline-not-npy", f"{SALIENCY} --method integrated-gradients --baseline {{file}}"),
    ("saliency-baseline-unused", f"{SALIENCY} --method saliency --baseline 0.5"),
    ("saliency-smoothgrad-with-ig", f"{SALIENCY} --method integrated-gradients --smoothgrad 4"),
    *_flag_cases(SALIENCY, "--steps", ["0", "-1", "x"]),
    *_flag_cases(SALIENCY, "--sigma", ["nan", "-1", "inf"]),
    *_flag_cases(SALIENCY, "--smoothgrad", ["-1"]),
    *_flag_cases(SALIENCY, "--count", ["0", "-1"]),
    *_flag_cases(SALIENCY, "--indices", ["x", "99999", "-1", ","]),
    *_flag_cases(SALIENCY, "--seed", ["-1"]),
    ("saliency-split", f"{SALIENCY} --split val"),
    ("saliency-out-is-file", "saliency -c {ckpt} --dataset digits --out {file}"),
    ("saliency-out-exists", "saliency -c {ckpt} --dataset digits --out {fx}"),
    ("saliency-checkpoint-missing", "saliency -c {tmp}/none.safetensors --dataset digits --out {tmp}/sal"),
    ("saliency-dataset-unknown", "saliency -c {ckpt} --dataset bogus --out {tmp}/sal"),
    # issue 22: bounded YAML, guarded image decoding, class lists checked across splits
    ("run-spec-alias-bomb", "study run {fx}/alias_bomb.yaml --out {tmp}/s"),
    ("run-spec-recursive-alias", "study run {fx}/alias_loop.yaml --out {tmp}/s"),
    ("run-spec-deep", "study run {fx}/deep.yaml --out {tmp}/s"),
    ("run-spec-huge", "study run {fx}/huge.yaml --out {tmp}/s"),
    ("demo-spec-deep", "demo --spec {fx}/deep.yaml --out {tmp}/d"),
    *[(f"finetune-folder-{case}", f"finetune {{ckpt}} --target folder:{{fx}}/img_{case} --epochs 1")
      for case in IMAGE_CASES],
    ("recommend-one-class", "recommend --target folder:{fx}/img_one_class --n 2 --source {ckpt}"),
    ("influence-folder-truncated", "influence -c {ckpt} --dataset folder:{fx}/img_truncated "
     "--out {tmp}/inf"),
    # zoo, data, the top level
    ("zoo-fetch-unknown", "zoo fetch nonesuch --dest {tmp}/z"),
    ("zoo-fetch-not-downloaded", "zoo fetch resnet50-l2-eps3 --dest {tmp}/z"),
    ("zoo-fetch-dest-is-file", "zoo fetch resnet50-l2-eps3 --dest {file}"),
    ("zoo-list-kind", "zoo list --kind big"),
    ("data-fetch-unknown", "data fetch nonesuch --data-root {tmp}/data"),
    ("unknown-command", "frobnicate"),
    ("study-unknown-subcommand", "study frobnicate"),
    # issue 22: resources bounded by this machine
    ("run-spec-cpus-huge", "study run {fx}/cpus_huge.yaml --out {tmp}/s"),
    ("run-cpus-per-run-1000", f"{RUN} --cpus-per-run 1000"),
    ("run-cpus-times-workers", f"{RUN} --cpus-per-run 1 --workers 64"),
    # issue 22: spec values found only at run time before
    ("run-spec-val-images-too-many", "study run {fx}/val_big.yaml --out {tmp}/s"),
    ("run-spec-n-beside-val-images", "study run {fx}/val_n.yaml --out {tmp}/s"),
    ("run-spec-label-list", "study run {fx}/label_list.yaml --out {tmp}/s"),
    ("run-spec-eps-true", "study run {fx}/eps_true.yaml --out {tmp}/s"),
    ("run-spec-norm-none-eps", "study run {fx}/none_eps.yaml --out {tmp}/s"),
    ("run-spec-data-root-list", "study run {fx}/root_list.yaml --out {tmp}/s"),
    ("run-spec-nan-source", "study run {fx}/nan_source.yaml --out {tmp}/s"),
    # issue 22: non-finite weights, Linf radii beyond the pixel range
    ("evaluate-nan-checkpoint", "evaluate {fx}/nan.safetensors --dataset digits"),
    ("finetune-nan-checkpoint", "finetune {fx}/nan.safetensors --target digits --epochs 1"),
    ("evaluate-linf-eps-2", f"{EVALUATE} --norm linf --eps 2"),
    ("pretrain-linf-eps-8", f"{PRETRAIN} --attack pgd --norm linf --eps 8"),
    # issue 22: options that do nothing, sizes without a bound
    ("influence-rcond-cholesky", f"{INFLUENCE} --solver cholesky --rcond 0.01"),
    ("influence-cg-tol-without-cg", f"{INFLUENCE} --cg-tol 1e-3"),
    ("influence-refine-without-mixed", f"{INFLUENCE} --refine-tol 1e-6"),
    ("influence-refine-iter-without-mixed", f"{INFLUENCE} --refine-max-iter 3"),
    ("influence-grid-huge", f"{INFLUENCE} --grid 200 200"),
    ("influence-test-n-too-large", f"{INFLUENCE} --test-n 100000"),
    ("saliency-sigma-without-smoothgrad", f"{SALIENCY} --sigma 0.2"),
    ("saliency-smoothgrad-huge", f"{SALIENCY} --smoothgrad 100000000"),
    ("saliency-count-too-large", f"{SALIENCY} --count 100000"),
    ("evaluate-images-too-large", f"{EVALUATE} --images 100000"),
    ("recommend-n-too-large", "recommend --target digits --n 5000 --source {ckpt}"),
    # issue 22: CSVs
    ("analyze-csv-folder", "analyze --csv {fx} --out {tmp}/a"),
    ("analyze-csv-header-case", "analyze --csv {fx}/case.csv --out {tmp}/a"),
    ("analyze-csv-duplicate-run-ids", "analyze --csv {fx}/dup_ids.csv --out {tmp}/a"),
    ("analyze-epochs-csv-epoch-beyond", f"{ANALYZE_CSV} --epochs-csv {{fx}}/epochs_beyond.csv"),
    ("analyze-epochs-csv-epoch-zero", f"{ANALYZE_CSV} --epochs-csv {{fx}}/epochs_zero.csv"),
    ("analyze-epochs-csv-epoch-twice", f"{ANALYZE_CSV} --epochs-csv {{fx}}/epochs_twice.csv"),
]


# --- fixtures ------------------------------------------------------------------------
SPEC_HEAD = """\
    name: tiny
    sources:
      - {{model: {natural}, label: natural{eps}}}
      - {{model: {robust}, label: robust}}
    targets: [digits]
    train_images: [30]
    unfrozen_blocks: [0]
    epochs: 1
    seeds: [0]
    """
BAD_SPECS = {
    "eps_nan": ({"eps": ", eps: .nan"}, ""),
    "eps_inf": ({"eps": ", eps: .inf"}, ""),
    "cpus_nan": ({}, "resources: {num_cpus: .nan}"),
    "cpus_neg": ({}, "resources: {num_cpus: -2}"),
    "gpus_neg": ({}, "resources: {num_gpus: -1}"),
    "lr_inf": ({}, "recipe: {lr: .inf}"),
    "lr_nan": ({}, "recipe: {lr: .nan}"),
    "eval0": ({}, "recipe: {eval_every: 0}"),
    "momentum5": ({}, "recipe: {momentum: 5}"),
    "wd_huge": ({}, "recipe: {weight_decay: 1e9}"),
    "head_zeros": ({}, "recipe: {head_init: zeros}"),
    "robust_l3": ({}, "recipe: {robust_norm: l3, robust_eps: 0.1}"),
    "robust_steps": ({}, "recipe: {robust_steps: -4}"),
    "robust_norm": ({}, "recipe: {robust_norm: l2}"),
    "res_big": ({}, "recipe: {resolution: 100000}"),
    "device_bogus": ({}, "device: bogus"),
    "device_budget_word": ({}, "device_budget: lots"),
    "device_budget_zero": ({}, "device_budget: 0"),
    "device_budget_neg": ({}, "device_budget: -4 GiB"),
    "input_pipeline_1": ({}, "recipe: {input_pipeline: 1}"),
    "seed_neg": ({}, "seeds: [-1]"),
    "malformed": ({}, "recipe: {lr: [0.1"),
    "cpus_huge": ({}, "resources: {num_cpus: 100000}"),
    "val_big": ({}, "recipe: {val_images: 5000}"),
    "val_n": ({}, "recipe: {val_images: 1330}"),  # 30 training images do not fit beside
    "eps_true": ({"eps": ", eps: true"}, ""),
    "none_eps": ({"eps": ", norm: none, eps: 0.5"}, ""),
    "root_list": ({}, "data_root: [a, b]"),
}
CSV_HEAD = "source,eps,target,n,unfrozen_blocks,epochs,seed,test_acc\n"


def _csv_rows(acc: str = "{acc}") -> str:
    rows = []
    for source, eps in (("natural", 0), ("robust", 0.5)):
        for n in (10, 20):
            for seed in (0, 1):
                value = 0.5 + n / 100 + seed / 100 + eps / 10
                rows.append(f"{source},{eps},digits,{n},0,2,{seed},{acc.format(acc=value)}")
    return "\n".join(rows) + "\n"


@pytest.fixture(scope="module")
def fx(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bad_inputs")
    torch.manual_seed(0)
    model = build_architecture("small_resnet", 10, mean=(0.3,) * 3, std=(0.35,) * 3, input_size=16)
    ckpt = save_model(model, folder / "src", {"training": "natural", "eps": 0.0,
                                              "source_dataset": "digits"})
    torch.manual_seed(1)
    robust = save_model(build_architecture("small_resnet", 10, input_size=16), folder / "robust",
                        {"training": "pgd", "eps": 0.5, "norm": "l2", "source_dataset": "digits"})
    head_only = save_model(model, folder / "head_only", {
        "training": "finetune", "target": "digits", "seed": 0, "n": 30, "n_requested": "30",
        "unfrozen_blocks": "0"})
    fmt = {"natural": ckpt, "robust": robust}
    good = textwrap.dedent(SPEC_HEAD.format(**fmt, eps=""))
    (folder / "spec.yaml").write_text(good)
    (folder / "other.yaml").write_text(good.replace("seeds: [0]", "seeds: [5]"))
    for name, (head, extra) in BAD_SPECS.items():
        text = textwrap.dedent(SPEC_HEAD.format(**fmt, eps=head.get("eps", "")))
        if extra.startswith("seeds"):
            text = text.replace("seeds: [0]\n", "")
        (folder / f"{name}.yaml").write_text(text + extra + "\n")
    from robust_transfer.study import run_study

    run_study(folder / "spec.yaml", folder / "study", run_fn=_instant_run)
    (folder / "garbage").mkdir()
    (folder / "garbage" / "study.db").write_bytes(b"not a database, just bytes" * 200)
    (folder / "file").write_text("an ordinary file\n")
    np.save(folder / "baseline.npy", np.zeros((3, 5, 5)))  # not the 16 px model input's shape
    (folder / "ok.csv").write_text(CSV_HEAD + _csv_rows())
    (folder / "dup.csv").write_text(CSV_HEAD.replace("\n", ",test_acc\n")
                                    + _csv_rows().replace("\n", ",0.1\n"))
    text_rows = _csv_rows().splitlines()
    text_rows[0] = text_rows[0].rsplit(",", 1)[0] + ",high"
    (folder / "text.csv").write_text(CSV_HEAD + "\n".join(text_rows) + "\n")
    (folder / "lacking.csv").write_text(CSV_HEAD.replace(",seed", "") + "natural,0,digits,10,0,2,0.5\n")
    (folder / "percent.csv").write_text(CSV_HEAD + _csv_rows("{acc}").replace(",0.", ",9"))
    _issue22_fixtures(folder, good, ckpt)
    _yaml_bombs(folder, textwrap.dedent(SPEC_HEAD.format(**fmt, eps="")))
    _image_folders(folder)
    return {"fx": folder, "ckpt": ckpt, "study": folder / "study", "spec": folder / "spec.yaml",
            "file": folder / "file", "ckpt_head": head_only}


def _issue22_fixtures(folder: Path, good: str, ckpt: Path) -> None:
    (folder / "label_list.yaml").write_text(good.replace("label: natural", "label: [a, b]", 1))
    torch.manual_seed(2)
    broken = build_architecture("small_resnet", 10, input_size=16)
    with torch.no_grad():
        next(broken.parameters())[0] = float("nan")
    nan = save_model(broken, folder / "nan", {"training": "natural", "eps": 0.0,
                                               "source_dataset": "digits"})
    (folder / "nan_source.yaml").write_text(good.replace(str(ckpt), str(nan)))
    (folder / "case.csv").write_text(CSV_HEAD.replace("source,eps", "Source, eps") + _csv_rows())
    rows = _csv_rows().splitlines()
    (folder / "dup_ids.csv").write_text("run_id," + CSV_HEAD + "".join(
        f"r{i // 2},{row}\n" for i, row in enumerate(rows)))
    for name, epochs in (("beyond", "1,0.5\nok-0,3,0.6"), ("zero", "0,0.5"),
                         ("twice", "1,0.5\nok-0,1,0.6")):
        (folder / f"epochs_{name}.csv").write_text(f"run_id,epoch,test_acc\nok-0,{epochs}\n")


def _yaml_bombs(folder: Path, good: str) -> None:
    """Specs that would hang or crash an unbounded YAML loader, each a valid spec plus one key."""
    levels = ["&l0 [x, x, x, x, x, x, x, x, x, x]"] + [
        f"&l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 10)]  # 10**10 values
    (folder / "alias_bomb.yaml").write_text(good + f"description: [{', '.join(levels)}]\n")
    (folder / "alias_loop.yaml").write_text(good + "description: &d [*d]\n")
    (folder / "deep.yaml").write_text(good + "description: " + "[" * 5000 + "]" * 5000 + "\n")
    (folder / "huge.yaml").write_text(good + "description: " + "x" * (1 << 21) + "\n")


def _image_folders(folder: Path) -> None:
    """``img_<case>/{train,test}/<class>/*.png``, one folder per :data:`IMAGE_CASES`."""
    import struct
    import zlib

    import numpy as np
    from PIL import Image

    def make(case: str, train: dict[str, int], test: dict[str, int]) -> Path:
        for split, classes in (("train", train), ("test", test)):
            for cls, count in classes.items():
                (folder / f"img_{case}" / split / cls).mkdir(parents=True)
                for i in range(count):
                    Image.fromarray(np.full((8, 8, 3), 60 * i, np.uint8)).save(
                        folder / f"img_{case}" / split / cls / f"{i}.png")
        return folder / f"img_{case}" / "train" / "b"

    two = {"a": 2, "b": 2}
    cut = make("truncated", two, two) / "1.png"
    cut.write_bytes(cut.read_bytes()[:-30])
    for case, (width, height) in (("bomb", (20000, 10000)), ("huge", (9000, 9000))):
        path = make(case, two, two) / "1.png"  # a header claiming the size, 1x1 pixel data
        Image.new("L", (1, 1)).save(path)
        data = bytearray(path.read_bytes())
        data[16:24] = struct.pack(">II", width, height)
        data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
        path.write_bytes(bytes(data))
    Image.fromarray(np.full((8, 8), 70000, np.int32)).save(make("int32", two, two) / "1.tif")
    Image.fromarray(np.full((8, 8), 0.5, np.float32)).save(make("float", two, two) / "1.tif")
    make("unseen_test_class", two, {**two, "z": 1})
    make("empty_train_class", {**two, "c": 0}, two)
    make("one_class", {"a": 3}, {"a": 1})


def _instant_run(task, ctx):
    from robust_transfer.study.store import RunOutcome

    history = ({"epoch": 1, "lr": 0.1, "train_loss": 1.0, "train_acc": 0.5, "test_loss": 1.0,
                "test_acc": 0.5},)
    return RunOutcome(task.run_id, "finished", 0.0, 1.0, n=30, history=history)


def _tree(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*"))}


def _invoke(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exit_:  # argparse's own exits (usage errors)
        return exit_.code


def test_the_table_has_every_case_of_the_issue():
    assert len(CASES) >= 150
    assert len({case_id for case_id, _ in CASES}) == len(CASES), "case ids must be unique"


@pytest.mark.parametrize("argv", [argv for _, argv in CASES], ids=[i for i, _ in CASES])
def test_bad_input_is_refused_in_one_line_leaving_nothing(argv, fx, tmp_path, capsys,
                                                         monkeypatch):
    monkeypatch.setenv("ROBUST_TRANSFER_ZOO", str(tmp_path / "zoo-cache"))
    before_tmp, before_fx = _tree(tmp_path), _tree(fx["fx"])
    args = shlex.split(argv.format(tmp=tmp_path, **fx))
    code = _invoke(args)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert "Traceback" not in captured.err + captured.out
    assert code == 2, f"exit {code}, stderr: {captured.err[-500:]}"
    assert len(lines) == 1 and lines[0].startswith("error:"), captured.err
    assert _tree(tmp_path) == before_tmp, "a refused command left files"
    # a refused second study may rewrite the driver's pid file, never add or remove files
    assert _tree(fx["fx"]).keys() == before_fx.keys(), "a refused command changed the fixtures"


def test_a_device_name_that_is_none_is_refused_by_the_device_check():
    import argparse

    from robust_transfer.cli import validate as v

    for bad in ("gpu0", "auto:1", "cuda:x"):
        with pytest.raises(argparse.ArgumentTypeError, match=f"unknown device '{re.escape(bad)}'"):
            v.device(bad)
    assert v.device("cpu") == "cpu"  # exists everywhere


@pytest.mark.parametrize("extra, needle", [
    ("--gpus-per-run 2", "num_gpus 2 but this machine has 1 GPU"),
    ("--gpus-per-run 0.5 --workers 4", "4 runs at a time x num_gpus 0.5 = 2 GPUs"),
], ids=["one-run-over", "shares-over"])
def test_gpu_shares_beyond_the_gpus_present_are_refused(extra, needle, fx, tmp_path, capsys,
                                                         monkeypatch):
    """Shares are checked against the GPUs torch sees (one, faked here: no GPU is needed)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    before = _tree(fx["fx"])
    argv = f"study run {fx['spec']} --out {tmp_path}/s --device cuda {extra}"
    code = _invoke(shlex.split(argv))
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error:"), err
    assert needle in err and "Traceback" not in err
    assert _tree(tmp_path) == {} and _tree(fx["fx"]).keys() == before.keys()


def test_gpu_shares_within_the_gpus_present_pass_the_check():
    from robust_transfer.study.runner import check_gpu_shares

    check_gpu_shares(0.25, 4, "cuda", gpus_present=1)  # four runs share one GPU
    check_gpu_shares(0.5, None, "cuda", gpus_present=1)  # Ray: as many as fit
    check_gpu_shares(8, 1, "cpu", gpus_present=0)  # not a GPU run: nothing to share
