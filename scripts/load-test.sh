#!/usr/bin/env bash
# Load test of `lookalike serve`: N concurrent clients POSTing real catalog photos to
# /api/search for a fixed time, with wrk (Debian package `wrk`; installed if missing).
#
#   scripts/load-test.sh DB [SECONDS=30] [CLIENTS=16] [SERVE_ARGS...]
#   LOAD_TEST_URL=http://127.0.0.1:8100 scripts/load-test.sh DB [SECONDS] [CLIENTS]
#
# With LOAD_TEST_URL, the load goes to that address (a load balancer in front of replicas:
# scripts/replicas.sh) and DB only gives the query photos. Otherwise it starts its own server
# on a free 127.0.0.1 port over DB (use a copy: nothing is written, but
# keep production catalogs out of experiments), takes 200 product photos from the catalog's
# stored images as queries (rotating, each client starting at a different one), and prints
# wrk's report plus the server's own latency and batch-size metrics. Traffic goes to the
# loopback address only and stops after SECONDS. Exits non-zero when any request got an answer
# other than 200 or 503 with Retry-After, or a connection error or timeout.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
db=${1:?usage: scripts/load-test.sh DB [SECONDS] [CLIENTS] [SERVE_ARGS...]}
seconds=${2:-30}
clients=${3:-16}
shift $(( $# < 3 ? $# : 3 ))
bin=${LOOKALIKE_BIN:-${CARGO_TARGET_DIR:-$here/target}/release/lookalike}

command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; }
work=$(mktemp -d)
server=""
trap '[ -z "$server" ] || kill "$server" 2>/dev/null || true; rm -rf "$work"' EXIT

python3 - "$db" "$work" <<'PY'
import sqlite3, sys
db, out = sys.argv[1], sys.argv[2]
con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
rows = con.execute("SELECT key, bytes FROM images ORDER BY key LIMIT 200").fetchall()
if not rows:
    sys.exit("the catalog has no stored images to use as queries")
with open(f"{out}/load.lua", "w") as lua:
    lua.write("local files = {\n")
    for key, data in rows:
        path = f"{out}/q{key}.img"
        open(path, "wb").write(data)
        lua.write(f'  "{path}",\n')
    lua.write("}\n")
PY
cat >> "$work/load.lua" <<'LUA'
local boundary = "lookalike-load-test-boundary"
local bodies = {}
local n = 0
function init(args)
  for i, path in ipairs(files) do
    local f = assert(io.open(path, "rb"))
    local data = f:read("*all")
    f:close()
    bodies[i] = "--" .. boundary .. "\r\nContent-Disposition: form-data; name=\"k\"\r\n\r\n10\r\n" ..
      "--" .. boundary .. "\r\nContent-Disposition: form-data; name=\"image\"; filename=\"q.png\"\r\n" ..
      "Content-Type: application/octet-stream\r\n\r\n" .. data .. "\r\n--" .. boundary .. "--\r\n"
  end
  n = math.random(#bodies)
end
function request()
  n = n % #bodies + 1
  return wrk.format("POST", "/api/search", { ["Content-Type"] = "multipart/form-data; boundary=" .. boundary }, bodies[n])
end
-- Each thread counts its answers: 200, 503 with Retry-After (load shedding, as designed), and
-- anything else (an error). done() adds the threads' counts up.
local threads = {}
function setup(thread)
  table.insert(threads, thread)
end
answered, shed, failed = 0, 0, 0
function response(status, headers, body)
  if status == 200 then
    answered = answered + 1
  elseif status == 503 and (headers["retry-after"] or headers["Retry-After"]) then
    shed = shed + 1
  else
    failed = failed + 1
  end
end
function done(summary, latency, requests)
  local a, s, f = 0, 0, 0
  for _, thread in ipairs(threads) do
    a, s, f = a + thread:get("answered"), s + thread:get("shed"), f + thread:get("failed")
  end
  local e = summary.errors
  io.write(string.format("answers: 200 %d, 503 with Retry-After %d, other %d\n", a, s, f))
  local out = assert(io.open(os.getenv("LOAD_TEST_RESULT"), "w"))
  out:write(string.format("%d %d\n", f, e.connect + e.read + e.write + e.timeout))
  out:close()
  io.write(string.format("requests: %d in %.1f s = %.1f requests/s\n", summary.requests, summary.duration / 1e6, summary.requests / (summary.duration / 1e6)))
  io.write(string.format("latency: median %.1f ms, p90 %.1f ms, p99 %.1f ms, max %.1f ms\n",
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000, latency.max / 1000))
  local e = summary.errors
  io.write(string.format("errors: non-2xx %d, connect %d, read %d, write %d, timeout %d\n", e.status, e.connect, e.read, e.write, e.timeout))
end
LUA

if [ -n "${LOAD_TEST_URL:-}" ]; then
  url=$LOAD_TEST_URL
  echo "target: $url ($(curl -s "$url/readyz"))"
else
  "$bin" serve --db "$db" --addr 127.0.0.1:0 "$@" > "$work/serve.out" 2> "$work/serve.err" &
  server=$!
  for _ in $(seq 1 120); do
    grep -q "listening on" "$work/serve.out" 2>/dev/null && break
    sleep 0.5
  done
  url=$(sed -n 's/^listening on //p' "$work/serve.out")
  [ -n "$url" ] || { cat "$work/serve.err" >&2; echo "the server did not start" >&2; exit 1; }
  echo "server: $url over $db ($(curl -s "$url/readyz"))"
fi
echo "wrk -t2 -c$clients -d${seconds}s --latency -s load.lua $url  (POST /api/search, multipart, 200 catalog photos, k=10)"
LOAD_TEST_RESULT="$work/result" wrk -t2 -c"$clients" -d"${seconds}s" --timeout 10s --latency -s "$work/load.lua" "$url" | tee "$work/wrk.out"
if [ -n "$server" ]; then
  echo "--- server metrics"
  curl -s "$url/metrics" | grep -E '^lookalike_(http_requests_total\{route="/api/search"|encoder_batch_size_(sum|count)|encoder_batch_duration_seconds_(sum|count)|encoder_rejected_total|catalog_products)'
  echo "--- server memory: peak RSS $(awk '/VmHWM/ {printf "%.0f MB", $2/1024}' /proc/$server/status), now $(awk '/VmRSS/ {printf "%.0f MB", $2/1024}' /proc/$server/status)"
  answered=$(awk '/^answers:/ {print $3}' "$work/wrk.out" | tr -d ,)
  awk -v t="$(awk '{print $14 + $15}' "/proc/$server/stat")" -v hz="$(getconf CLK_TCK)" -v n="$answered" \
    'BEGIN { if (n > 0) printf "--- server CPU: %.2f ms per answered search (user + system, start-up included)\n", 1000 * t / hz / n }'
fi
# A load test that saw errors fails: any answer but 200 or 503 with Retry-After, or any
# connection error or timeout.
read -r failed socket_errors < "$work/result"
if [ "$failed" != 0 ] || [ "$socket_errors" != 0 ]; then
  echo "load test FAILED: $failed answers other than 200 or 503 with Retry-After, $socket_errors connection errors or timeouts" >&2
  exit 1
fi
