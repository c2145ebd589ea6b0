#!/usr/bin/env bash
# Creates (or reuses) the virtual environment of the Python reference baselines,
# bench/ingest_reference.py and bench/faiss_reference.py, and prints its python's path on stdout
# (everything else goes to stderr, so `PY=$(bench/setup-reference.sh)` works).
#
#   LOOKALIKE_BENCH_VENV  where the venv lives (default ~/.cache/lookalike/bench-venv)
#   PYTHON                the interpreter to build it from (default python3; must be CPython 3.11,
#                         the version the hashes in requirements-reference.txt are for)
#
# Idempotent: a venv whose recorded requirements hash matches the current
# bench/requirements-reference.txt is left as it is; otherwise it is (re)installed with
# --require-hashes, so only the exact pinned wheels can end up in it.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
req="$here/requirements-reference.txt"
venv="${LOOKALIKE_BENCH_VENV:-$HOME/.cache/lookalike/bench-venv}"
python="${PYTHON:-python3}"
stamp="$venv/.requirements-reference.sha256"

[[ -f "$req" ]] || { echo "setup-reference: missing $req" >&2; exit 1; }
want="$(sha256sum "$req" | cut -d' ' -f1)"

if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    echo "setup-reference: $venv is up to date" >&2
    echo "$venv/bin/python"
    exit 0
fi

command -v "$python" >/dev/null || { echo "setup-reference: $python not found (set PYTHON)" >&2; exit 1; }
version="$("$python" -c 'import sys, platform; print(platform.python_implementation(), "%d.%d" % sys.version_info[:2])')"
if [[ "$version" != "CPython 3.11" ]]; then
    echo "setup-reference: $python is $version; the pinned wheels need CPython 3.11 (set PYTHON)" >&2
    exit 1
fi

if [[ ! -x "$venv/bin/python" ]]; then
    echo "setup-reference: creating $venv" >&2
    mkdir -p "$(dirname "$venv")"
    "$python" -m venv "$venv"
fi

echo "setup-reference: installing $req" >&2
rm -f "$stamp"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
    --require-hashes --only-binary=:all: -r "$req" >&2
"$venv/bin/python" -c 'import numpy, PIL, onnxruntime, faiss' >&2
echo "$want" >"$stamp"
echo "$venv/bin/python"
