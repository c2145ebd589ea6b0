#!/usr/bin/env bash
# Fails when a Rust file is not as `cargo fmt` (with rustfmt.toml) would write it, so that a
# newcomer's editor formatting a file on save changes only what they changed. Where rustfmt is
# not installed (a toolchain without the component) there is nothing to check with.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! cargo fmt --version > /dev/null 2>&1; then
  echo "check-format: rustfmt is not installed (rustup component add rustfmt), skipped"
  exit 0
fi
if ! cargo fmt --check > /dev/null 2>&1; then
  echo "check-format: these files are not formatted; run \`cargo fmt\`:" >&2
  cargo fmt -- --check -l >&2 || true
  exit 1
fi
echo "check-format: every Rust file is formatted"
