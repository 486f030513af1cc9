#!/usr/bin/env bash
# One command for a GPU machine: smoke-test every CUDA path, then run every speed benchmark at full size.
# Writes $OUT/device_check.md and $OUT/device_check.json (OUT defaults to artifacts/device_check).
#   bash benchmarks/device_check.sh              # on the GPU machine (under 8 minutes on one H100: the benchmarks stop at their time limits, 7.3 minutes in all)
#   bash benchmarks/device_check.sh --dry-run    # anywhere: CPU, tiny sizes (what the test suite runs)
# The CIFAR-10 subset is read from --data-root (default: data/, or $LANDSCAPE_TEST_DATA); copy
# ../shared/data/cifar-10-batches-py into data/ and carry `data` to the device machine. PYTHON names the
# interpreter (default python3; the tests pass the one running them).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export MPLBACKEND=Agg
OUT="${OUT:-artifacts/device_check}"
exec "${PYTHON:-python3}" benchmarks/device_check.py --out "$OUT" "$@"
