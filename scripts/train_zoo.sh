#!/usr/bin/env bash
# Reproduces the embedded zoo (src/robust_transfer/zoo/) on a CPU. Each line is the exact
# command recorded in that model's JSON metadata (`command`). Robust models train on a
# 20,000-image seeded subset with 3-step PGD to fit a 2-core CPU budget.
set -euo pipefail
RT=${RT:-robust-transfer}
Z=${ZOO_DIR:-src/robust_transfer/zoo}
common="--arch small_resnet --dataset fmnist --schedule cosine --batch-size 128 --eval-images 2000 --seed 0"
robust="--epochs 3 --train-images 20000 --attack pgd --attack-steps 3"
$RT pretrain $common --epochs 4 --out $Z/fmnist-natural "$@"
$RT pretrain $common $robust --norm l2 --eps 0.25 --out $Z/fmnist-l2-eps0.25 "$@"
$RT pretrain $common $robust --norm l2 --eps 1 --out $Z/fmnist-l2-eps1 "$@"
$RT pretrain $common $robust --norm linf --eps 0.1 --out $Z/fmnist-linf-eps0.1 "$@"
