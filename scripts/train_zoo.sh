#!/usr/bin/env bash
# Reproduces the embedded zoo (src/robust_transfer/zoo/) on a CPU. Each line is the exact
# command recorded in that model's JSON metadata.
set -euo pipefail
RT=${RT:-robust-transfer}
Z=${ZOO_DIR:-src/robust_transfer/zoo}
common="--arch small_resnet --dataset fmnist --schedule cosine --batch-size 128 --eval-images 2000 --seed 0"
$RT pretrain $common --epochs 4 --out $Z/fmnist-natural "$@"
$RT pretrain $common --epochs 3 --attack pgd --norm l2 --eps 0.25 --attack-steps 3 --out $Z/fmnist-l2-eps0.25 "$@"
$RT pretrain $common --epochs 3 --attack pgd --norm l2 --eps 1.0 --attack-steps 3 --out $Z/fmnist-l2-eps1 "$@"
$RT pretrain $common --epochs 3 --attack pgd --norm linf --eps 0.1 --attack-steps 3 --out $Z/fmnist-linf-eps0.1 "$@"
