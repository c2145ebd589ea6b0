#!/usr/bin/env bash
# Fails when git tracks a file that .gitignore says must not be committed (build output,
# downloaded assets, Python bytecode). .gitignore only stops `git add` of new files; a file
# committed by mistake stays tracked, and it did once (__pycache__/*.pyc). Outside a git
# checkout (a source tarball) there is nothing to check.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! git rev-parse --is-inside-work-tree > /dev/null 2>&1; then
  echo "check-tracked-ignored: not a git checkout, skipped"
  exit 0
fi
tracked=$(git ls-files --cached --ignored --exclude-standard)
if [ -n "$tracked" ]; then
  echo "check-tracked-ignored: these files are committed but .gitignore ignores them; remove them with \`git rm --cached\`:" >&2
  echo "$tracked" >&2
  exit 1
fi
echo "check-tracked-ignored: no ignored file is tracked"
