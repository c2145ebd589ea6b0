#!/usr/bin/env bash
# Fails when the test build would compile a dependency with other features than the release
# build: dev-dependencies that switch on features of shared crates make `cargo test --release`
# build those crates, and everything above them, a second time (it once doubled `make test`).
# Compares `cargo tree` without and with dev-dependencies; takes a few seconds, builds nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
target=$(rustc -vV | sed -n 's/^host: //p')
tree() { cargo tree --locked --target "$target" --prefix none -f '{p} {f}' "$@"; }
python3 - <(tree -e no-dev) <(tree) <<'PY'
import sys

def features(path):
    seen = {}
    for line in open(path):
        words = line.replace(" (*)", "").split()
        if len(words) < 2:
            continue
        # "name vX.Y.Z [(proc-macro)] [(path)] feature,list": the feature list is the last word
        # unless the line ends in a parenthesised note.
        crate = " ".join(words[:2]) + (" proc-macro" if "(proc-macro)" in words else "")
        last = words[-1] if len(words) > 2 and not words[-1].startswith("(") and not words[-1].endswith(")") else ""
        seen.setdefault(crate, set()).add(last)
    return seen

release, test = features(sys.argv[1]), features(sys.argv[2])
differ = [(c, release[c], test[c]) for c in sorted(release) if c in test and release[c] != test[c]]
for crate, a, b in differ:
    print(f"check-test-features: {crate}: release build {sorted(a)}, test build {sorted(b)}", file=sys.stderr)
if differ:
    print("check-test-features: a dev-dependency changes the features of crates the release build uses, so"
          " `cargo test --release` would compile them again: give it default-features = false, or choose another crate", file=sys.stderr)
    sys.exit(1)
print(f"check-test-features: the test build shares all {len(release)} crates of the release build")
PY
