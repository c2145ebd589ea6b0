#!/usr/bin/env bash
# The scale-out example of docs/deployment.md, on one machine: a 3-node Qdrant cluster
# (scripts/qdrant-cluster.sh), three `lookalike serve --no-catalog` replicas (one per Qdrant
# node, none with the catalog file) and nginx on loopback balancing between them; then
# scripts/load-test.sh against the balancer, and per replica: the searches it answered and the
# CPU time it spent per search (from /proc, user + system).
#
#   bash scripts/qdrant-cluster.sh start
#   bash scripts/replicas.sh DB [SECONDS=30] [CLIENTS=16]
#
# DB is a catalog (the query photos come from its stored images; its vectors are synced to
# the collection `replicas` first: 3 shards, 2 copies each). nginx is Debian's (installed if
# missing). Everything listens on 127.0.0.1 only (balancer :8100, replicas :8101-8103) and
# stops when the script ends.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
db=${1:?usage: scripts/replicas.sh DB [SECONDS] [CLIENTS]}
seconds=${2:-30}
clients=${3:-16}
bin=${LOOKALIKE_BIN:-${CARGO_TARGET_DIR:-$here/target}/release/lookalike}
collection=replicas
nodes=(qdrant://127.0.0.1:6334 qdrant://127.0.0.1:6344 qdrant://127.0.0.1:6354)

command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light; }
nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "== syncing $db to collection $collection (3 shards x 2 copies)"
"$bin" sync --db "$db" --store "${nodes[0]}" --collection "$collection" --shards 3 --replicas 2 >/dev/null

# Load is measured once Qdrant has built its search graphs: while it builds them (minutes for
# 60,000 points on 2 cores) it takes every core and searches scan unindexed segments.
echo "== waiting for Qdrant to index the collection (status green)"
for _ in $(seq 1 1200); do
  status=$(curl -s "http://127.0.0.1:6333/collections/$collection" | python3 -c 'import json, sys; print(json.load(sys.stdin)["result"]["status"])' 2>/dev/null || echo unknown)
  [ "$status" = green ] && break
  sleep 1
done
echo "collection status: $status"

echo "== three replicas without the catalog, one per Qdrant node"
for i in 1 2 3; do
  "$bin" serve --no-catalog --store "${nodes[$((i - 1))]}" --collection "$collection" --addr "127.0.0.1:810$i" --workers 1 --threads 1 \
    > "$work/replica$i.out" 2> "$work/replica$i.err" &
  pids+=($!)
done
for i in 1 2 3; do
  for _ in $(seq 1 240); do
    grep -q "listening on" "$work/replica$i.out" 2>/dev/null && break
    sleep 0.5
  done
  grep -q "listening on" "$work/replica$i.out" || { cat "$work/replica$i.err" >&2; echo "replica $i did not start" >&2; exit 1; }
done

sed -e "s|@WORK@|$work|g" -e "s|@LISTEN@|127.0.0.1:8100|" \
  -e "s|@UPSTREAMS@|server 127.0.0.1:8101; server 127.0.0.1:8102; server 127.0.0.1:8103;|" \
  "$here/scripts/nginx-replicas.conf" > "$work/nginx.conf"
"$nginx_bin" -c "$work/nginx.conf" -e "$work/nginx-error.log"
for _ in $(seq 1 20); do curl -sf http://127.0.0.1:8100/readyz >/dev/null && break; sleep 0.25; done

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
before=()
for pid in "${pids[@]}"; do before+=("$(cpu_ticks "$pid")"); done
cluster_dir="${QDRANT_CLUSTER_DIR:-/tmp/lookalike-qdrant-cluster}"
qdrant_pids=$(cat "$cluster_dir"/node*/pid 2>/dev/null || true)
qdrant_ticks() { local t=0 p; for p in $qdrant_pids; do t=$((t + $(cpu_ticks "$p"))); done; echo "$t"; }
qdrant_before=$(qdrant_ticks)
: > "$work/access.log"

echo "== load through the balancer"
LOAD_TEST_URL=http://127.0.0.1:8100 bash "$here/scripts/load-test.sh" "$db" "$seconds" "$clients"

echo "== per replica"
hz=$(getconf CLK_TCK)
total=$(grep -c ' 200 /api/search$' "$work/access.log" || true)
qdrant_spent=$(( $(qdrant_ticks) - qdrant_before ))
printf "%-16s %10s %8s %14s %12s\n" replica searches share "CPU ms/search" "peak RSS MB"
for i in 1 2 3; do
  pid=${pids[$((i - 1))]}
  served=$(grep -c "^127.0.0.1:810$i 200 /api/search$" "$work/access.log" || true)
  ticks=$(( $(cpu_ticks "$pid") - ${before[$((i - 1))]} ))
  rss=$(awk '/VmHWM/ {printf "%.0f", $2 / 1024}' "/proc/$pid/status")
  awk -v r="127.0.0.1:810$i" -v n="$served" -v t="$ticks" -v hz="$hz" -v all="$total" -v rss="$rss" \
    'BEGIN { printf "%-16s %10d %7.1f%% %14.2f %12s\n", r, n, all ? 100 * n / all : 0, n ? 1000 * t / hz / n : 0, rss }'
done
awk -v t="$qdrant_spent" -v hz="$hz" -v n="$total" 'BEGIN { if (n > 0) printf "Qdrant, 3 nodes together: %.2f CPU ms per search\n", 1000 * t / hz / n }'

# The baseline, in the same run: one server with the catalog and the embedded store, one
# worker and one inference thread like each replica.
for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
echo "== baseline: one server with the catalog, embedded store, --workers 1 --threads 1"
bash "$here/scripts/load-test.sh" "$db" "$seconds" "$clients" --workers 1 --threads 1
