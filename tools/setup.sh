#!/usr/bin/env bash
# Create .venv and install rlhf_jax with its test extras (CPU). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# shellcheck source=/dev/null  # the venv's activate script exists only after setup
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch first, pinned: the CPU wheel (a bare `torch` would pull several GB of CUDA packages)
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[test]"
# The labelling app's browser tests drive the system's Chromium (Playwright never downloads one) and its
# storage tests also run against a real PostgreSQL server: both from Debian packages, installed when this
# runs as root with apt-get and they are missing (RLHF_JAX_NO_APT=1 skips it). Without them those tests
# skip, naming what is missing.
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "${RLHF_JAX_NO_APT:-0}" != 1 ] && [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing ${missing[*]} (Debian packages) for the labelling app's tests"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "setup: ${missing[*]} not installed: the browser / PostgreSQL tests will skip (install them as root)"
  fi
fi
