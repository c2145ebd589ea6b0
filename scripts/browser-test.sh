#!/usr/bin/env bash
# Drives lookalike's page in a real headless Chromium: tests/browser/run.mjs.
#
# Installs what it needs when missing: Debian's chromium (apt) and npm's playwright-core and
# axe-core (into tests/browser/node_modules, versions pinned by its package-lock.json). Playwright's own browser downloads are never used.
#
# Environment: LOOKALIKE_URL (a running `lookalike serve`), LOOKALIKE_PHOTO (an image to
# upload), LOOKALIKE_TEXT_FILE (a non-image), LOOKALIKE_ARTIFACTS (where screenshots go).
# tests/http.rs starts the server and calls this script.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
browser_dir="$here/tests/browser"

if [ ! -x /usr/bin/chromium ]; then
  echo "browser-test: installing Debian's chromium" >&2
  if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >&2
fi
if ! command -v node >/dev/null; then
  echo "browser-test: installing nodejs and npm" >&2
  if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq nodejs npm >&2
fi
if [ ! -f "$browser_dir/node_modules/playwright-core/package.json" ] || [ ! -f "$browser_dir/node_modules/axe-core/axe.min.js" ]; then
  echo "browser-test: installing playwright-core and axe-core into tests/browser/node_modules" >&2
  # PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD: playwright-core downloads nothing, but be explicit.
  (cd "$browser_dir" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --no-audit --no-fund --silent >&2)
fi
exec node "$browser_dir/run.mjs"
