#!/usr/bin/env bash
# Runs the cargo-fuzz targets (fuzz/fuzz_targets/) for a bounded time each, seeded with the
# hostile corpus. Exits non-zero if a target crashes (the crashing input is kept under
# fuzz/artifacts/). Usage: scripts/fuzz.sh [SECONDS_PER_TARGET]   (default 60)
#
# cargo fuzz needs nightly compiler flags; RUSTC_BOOTSTRAP=1 enables them on the stable
# toolchain this machine has.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1
# cargo fuzz has no --locked: check first that fuzz/Cargo.lock already pins every dependency
# (one the main crate gained since would otherwise be resolved to whatever is newest that day).
if ! cargo metadata --locked --format-version 1 --manifest-path fuzz/Cargo.toml >/dev/null; then
    echo "fuzz/Cargo.lock is out of date: run \`cargo metadata --format-version 1 --manifest-path fuzz/Cargo.toml >/dev/null\` and commit it" >&2
    exit 1
fi
# Build first, with all of cargo's output: a build failure (a full disk, say) must be readable in
# the CI log, not cut off by the `tail` on the fuzzer's output below.
echo "building the fuzz targets ($(df -h --output=avail . | tail -n 1 | tr -d ' ') free on disk)" >&2
cargo fuzz build --release
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for target in decode styles_csv; do
    mkdir -p "$work/$target"
    case $target in
        decode) seeds=tests/hostile/files ;;
        styles_csv) seeds=$(mktemp -d -p "$work"); find tests/hostile/catalogs -name styles.csv -exec sh -c 'cp "$1" "$2/$(echo "$1" | tr / _)"' _ {} "$seeds" \; ;;
    esac
    echo "fuzzing $target for ${seconds}s" >&2
    # -rss_limit_mb: a decoder that ignored its limits would blow through this and count as a crash.
    cargo fuzz run --release "$target" "$work/$target" "$seeds" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 2>&1 | tail -n 15
    echo "fuzz $target: no crash in ${seconds}s"
done
