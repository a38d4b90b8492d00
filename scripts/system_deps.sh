#!/usr/bin/env bash
# System data and tools the project uses, installed when missing.
#   Fashion-MNIST: the Debian package dataset-fashion-mnist (as root), else torchvision's
#   download into $ROBUST_TRANSFER_DATA.
#   --test: also Chromium, which the report test uses to render the HTML report, and
#   SLURM with munge (slurm-wlm, munge), which the SLURM executor tests start as a one-node
#   cluster (tests/study/slurm_cluster.py).
set -euo pipefail
FMNIST=/usr/share/datasets/fashion-mnist
want_chromium=0
[ "${1:-}" = "--test" ] && want_chromium=1

apt_install() {
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    [ -n "${_APT_UPDATED:-}" ] || { apt-get update -qq >/dev/null; _APT_UPDATED=1; }
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
    return 0
  fi
  return 1
}

if [ ! -f "$FMNIST/train-images-idx3-ubyte.gz" ]; then
  echo "installing Fashion-MNIST (Debian package dataset-fashion-mnist)"
  if ! apt_install dataset-fashion-mnist; then
    echo "not root: downloading Fashion-MNIST with torchvision instead"
    .venv/bin/python -c "import torchvision.datasets as d, os; d.FashionMNIST(os.environ.get('ROBUST_TRANSFER_DATA', os.path.expanduser('~/.cache/robust_transfer/data')), download=True)" \
      || { echo "error: could not get Fashion-MNIST; install dataset-fashion-mnist or set ROBUST_TRANSFER_DATA to a folder holding FashionMNIST/raw" >&2; exit 1; }
  fi
fi

if [ "$want_chromium" = 1 ] && ! command -v chromium >/dev/null; then
  echo "installing Chromium (for the report rendering test)"
  apt_install chromium || echo "warning: Chromium not installed; the report rendering test will be skipped" >&2
fi
if [ "$want_chromium" = 1 ] && { ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; }; then
  echo "installing SLURM and munge (for the SLURM executor tests)"
  apt_install slurm-wlm munge || echo "warning: SLURM not installed; the SLURM executor tests will be skipped" >&2
fi
exit 0
