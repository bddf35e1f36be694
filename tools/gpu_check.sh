#!/usr/bin/env bash
# The GPU check of issue 12 (see tools/gpu_check.py): run from the repository root on a CUDA machine.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python tools/gpu_check.py "$@"
