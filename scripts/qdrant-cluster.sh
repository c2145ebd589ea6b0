#!/usr/bin/env bash
# A local three-node Qdrant cluster on loopback, for the Qdrant tests and the scale-out example
# (the server binary comes from scripts/build-qdrant.sh).
#
# Checked (session 12) against Qdrant 1.18.3 built by build-qdrant.sh: the Qdrant tests pass
# on it, node 3 killed and restarted by the tests themselves.
#
#   bash scripts/qdrant-cluster.sh start        # nodes 1-3: gRPC 6334, 6344, 6354 (HTTP 6333, 6343, 6353)
#   bash scripts/qdrant-cluster.sh stop-node 3  # kill -9 one node (what the node-down test does)
#   bash scripts/qdrant-cluster.sh start-node 3 # bring it back with its storage
#   bash scripts/qdrant-cluster.sh stop         # stop all and keep nothing
#   eval "$(bash scripts/qdrant-cluster.sh env)"  # the variables make test reads
#
# Environment: QDRANT_BIN (default: what build-qdrant.sh prints), QDRANT_CLUSTER_DIR (storage
# and logs, default /tmp/lookalike-qdrant-cluster).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dir="${QDRANT_CLUSTER_DIR:-/tmp/lookalike-qdrant-cluster}"

http_port() { echo $((6333 + 10 * ($1 - 1))); }
grpc_port() { echo $((6334 + 10 * ($1 - 1))); }
p2p_port() { echo $((6335 + 10 * ($1 - 1))); }

binary() {
  if [ -n "${QDRANT_BIN:-}" ]; then echo "$QDRANT_BIN"; else bash "$here/build-qdrant.sh"; fi
}

start_node() {
  local n="$1" bin
  if [ -f "$dir/node$n/pid" ] && kill -0 "$(cat "$dir/node$n/pid")" 2>/dev/null; then
    return 0 # already running
  fi
  bin="$(binary)"
  mkdir -p "$dir/node$n/storage" "$dir/node$n/snapshots"
  local peer=(--uri "http://127.0.0.1:$(p2p_port 1)")
  [ "$n" = 1 ] || peer=(--bootstrap "http://127.0.0.1:$(p2p_port 1)" --uri "http://127.0.0.1:$(p2p_port "$n")")
  # A node that already joined keeps its peer identity in its storage; --uri is enough then.
  [ -e "$dir/node$n/storage/raft_state.json" ] && peer=(--uri "http://127.0.0.1:$(p2p_port "$n")")
  # `exec`: the recorded pid is the server's own, so stop-node's kill -9 reaches the server
  # (a subshell's pid would leave it running as an orphan).
  (cd "$dir/node$n" && \
    QDRANT__SERVICE__HTTP_PORT="$(http_port "$n")" \
    QDRANT__SERVICE__GRPC_PORT="$(grpc_port "$n")" \
    QDRANT__SERVICE__HOST=127.0.0.1 \
    QDRANT__CLUSTER__ENABLED=true \
    QDRANT__CLUSTER__P2P__PORT="$(p2p_port "$n")" \
    QDRANT__STORAGE__STORAGE_PATH="$dir/node$n/storage" \
    QDRANT__STORAGE__SNAPSHOTS_PATH="$dir/node$n/snapshots" \
    QDRANT__TELEMETRY_DISABLED=true \
    exec nohup "$bin" "${peer[@]}" >> "$dir/node$n/log" 2>&1) &
  echo $! > "$dir/node$n/pid"
  # Ready when its HTTP API answers (the health endpoint), within a minute.
  for _ in $(seq 600); do
    if curl -fsS "http://127.0.0.1:$(http_port "$n")/readyz" >/dev/null 2>&1; then return 0; fi
    if ! kill -0 "$(cat "$dir/node$n/pid")" 2>/dev/null; then echo "node $n exited:" >&2; tail -20 "$dir/node$n/log" >&2; return 1; fi
    sleep 0.1
  done
  echo "node $n did not become ready (log: $dir/node$n/log)" >&2
  return 1
}

stop_node() {
  local pid_file="$dir/node$1/pid"
  [ -f "$pid_file" ] || return 0
  local pid
  pid="$(cat "$pid_file")"
  kill -9 "$pid" 2>/dev/null || true
  # Gone for good (its ports closed) before this returns.
  while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
  rm -f "$pid_file"
}

case "${1:-}" in
  start)
    for n in 1 2 3; do start_node "$n"; done
    # Every peer known to the first node before anyone creates a collection.
    for _ in $(seq 300); do
      peers="$(curl -fsS "http://127.0.0.1:$(http_port 1)/cluster" | grep -o '"uri"' | wc -l || true)"
      [ "$peers" -ge 3 ] && break
      sleep 0.1
    done
    echo "three Qdrant nodes up: gRPC 127.0.0.1:$(grpc_port 1), :$(grpc_port 2), :$(grpc_port 3)" >&2
    ;;
  start-node) start_node "$2" ;;
  stop-node) stop_node "$2" ;;
  stop)
    for n in 1 2 3; do stop_node "$n"; done
    rm -rf "$dir"
    ;;
  env)
    echo "export LOOKALIKE_QDRANT_URL=qdrant://127.0.0.1:$(grpc_port 1)"
    echo "export LOOKALIKE_QDRANT_CLUSTER=qdrant://127.0.0.1:$(grpc_port 1),qdrant://127.0.0.1:$(grpc_port 2),qdrant://127.0.0.1:$(grpc_port 3)"
    echo "export LOOKALIKE_QDRANT_STOP='bash $here/qdrant-cluster.sh stop-node 3'"
    echo "export LOOKALIKE_QDRANT_START='bash $here/qdrant-cluster.sh start-node 3'"
    ;;
  *)
    echo "usage: $0 start | stop | start-node N | stop-node N | env" >&2
    exit 2
    ;;
esac
