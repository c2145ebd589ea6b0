#!/usr/bin/env bash
# How long `lookalike tune` takes with its defaults, this build against another binary (the
# commit before a change), alternating on the same machine, so that the ratio is measured in
# one run (`tune`'s time is mostly the model encoding perturbed photos and the training's
# matrix products, both of which move with the machine's load).
#
#   scripts/bench-tune.sh DB BEFORE_BIN [ROUNDS=2] [OUT_DIR=docs/bench/tune]
#
# DB is an indexed catalog with an articleType column (e.g. `lookalike index --db fm.db
# --fashion-mnist train`); each run tunes its own copy, so DB is left as it was. Writes
# OUT_DIR/tune.json and OUT_DIR/tune.md: wall seconds of each run, the training part that tune
# reports, the machine (CPU model, AVX2 / AVX-512 / VNNI) and the commits.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
db=${1:?usage: scripts/bench-tune.sh DB BEFORE_BIN [ROUNDS] [OUT_DIR]}
before=${2:?usage: scripts/bench-tune.sh DB BEFORE_BIN [ROUNDS] [OUT_DIR]}
rounds=${3:-2}
out=${4:-$here/docs/bench/tune}
after=${LOOKALIKE_BIN:-${CARGO_TARGET_DIR:-$here/target}/release/lookalike}
[ -f "$db" ] || { echo "no catalog at $db (index one first: lookalike index --db $db --fashion-mnist train)" >&2; exit 2; }
for bin in "$before" "$after"; do
    [ -x "$bin" ] || { echo "no lookalike binary at $bin (run \`make setup\` for this build)" >&2; exit 2; }
done
work=$(mktemp -d --tmpdir="$(dirname "$db")" bench-tune.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$out"

runs=()
for round in $(seq 1 "$rounds"); do
    for side in before after; do
        bin=$before; [ "$side" = after ] && bin=$after
        cp "$db" "$work/tune.db"
        start=$(date +%s.%N)
        "$bin" tune --db "$work/tune.db" > "$work/log" 2>&1 || { cat "$work/log" >&2; exit 1; }
        end=$(date +%s.%N)
        training=$(sed -n 's/.*tuned in \([0-9.]*\)s.*/\1/p' "$work/log" | tail -1)
        wall=$(python3 -c "print(round($end - $start, 2))")
        echo "round $round, $side: ${wall} s (training ${training} s)"
        runs+=("{\"round\": $round, \"binary\": \"$side\", \"wall_s\": $wall, \"training_s\": ${training:-null}}")
        rm -f "$work"/tune.db*
    done
done

cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
ext=$(for f in avx2 avx512f avx512_vnni; do grep -qw "$f" /proc/cpuinfo && printf '%s ' "$f"; done)
commit=$(git -C "$here" describe --always --dirty 2>/dev/null || echo unknown)
products=$(python3 -c "import sqlite3, sys; print(sqlite3.connect(f'file:{sys.argv[1]}?mode=ro', uri=True).execute('SELECT count(*) FROM products').fetchone()[0])" "$db")
runs_json=$(IFS=,; echo "${runs[*]}")
python3 - "$out" "$cpu" "$ext" "$commit" "$before" "$products" "$(nproc)" "[$runs_json]" <<'PY'
import json, statistics, sys
out, cpu, ext, commit, before, products, cores, runs = sys.argv[1:]
runs = json.loads(runs)
median = {side: statistics.median(r["wall_s"] for r in runs if r["binary"] == side) for side in ("before", "after")}
report = {
    "what": "lookalike tune --db COPY (defaults: --augment min(half the catalog, 30000))",
    "products": int(products),
    "machine": {"cpu": cpu, "extensions": ext.split(), "cores": int(cores)},
    "commit": commit,
    "before_binary": before,
    "runs": runs,
    "median_wall_s": median,
    "speedup": median["before"] / median["after"],
}
json.dump(report, open(f"{out}/tune.json", "w"), indent=2)
with open(f"{out}/tune.md", "w") as md:
    md.write(f"# `lookalike tune`, before and after\n\nMachine: {cpu} ({cores} cores; {ext.strip() or 'no AVX2'}). "
             f"Commit {commit}; before: `{before}`. Catalog: {products} products, default options. "
             f"Runs alternate before / after on copies of one catalog.\n\n")
    md.write("| round | binary | wall s | training s |\n|---|---|---|---|\n")
    for r in runs:
        md.write(f"| {r['round']} | {r['binary']} | {r['wall_s']:.1f} | {r['training_s']} |\n")
    md.write(f"\nMedian wall time: before {median['before']:.1f} s, after {median['after']:.1f} s: "
             f"**{report['speedup']:.2f}x** faster.\n\nCommand: `scripts/bench-tune.sh DB BEFORE_BIN {len(runs)//2}`\n")
print(f"median before {median['before']:.1f} s, after {median['after']:.1f} s: {report['speedup']:.2f}x")
PY
