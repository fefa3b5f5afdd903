#!/usr/bin/env bash
# Bench `shipyard serve` with the official azure-batch 15.1.0 Python SDK: create_tasks of N
# tasks (default 10000; target >= 10,000 tasks/s) and listing them paged (target < 1 s), with
# a raw-HTTP and a model-building baseline measured in the same run (scripts/bench/serve_sdk.py).
# Uses the in-memory backend (crates/serve/examples/serve_memory.rs) and the venv from
# scripts/setup.sh (SHIPYARD_PYVENV, default /opt/shipyard/pyvenv).
# Usage: scripts/bench-serve.sh [N] [SDK_THREADS]
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${SHIPYARD_PYVENV:-/opt/shipyard/pyvenv}
[ -x "$venv/bin/python" ] || { echo "no venv at $venv: run scripts/setup.sh" >&2; exit 1; }
profile=${SHIPYARD_BENCH_PROFILE:-release}
CARGO_INCREMENTAL=0 cargo build -q -p shipyard-serve --no-default-features --example serve_memory --profile "$profile"
dir=$( [ "$profile" = dev ] && echo debug || echo "$profile")
key=$("$venv/bin/python" -c 'import base64,os; print(base64.b64encode(os.urandom(32)).decode())')
out=$(mktemp)
SHIPYARD_SERVE_KEY=$key "target/$dir/examples/serve_memory" >"$out" &
pid=$!
trap 'kill $pid 2>/dev/null; rm -f "$out"' EXIT
for _ in $(seq 100); do grep -q listening "$out" && break; sleep 0.1; done
url=$(awk '/listening/ {print $2}' "$out")
SHIPYARD_SERVE_URL=$url SHIPYARD_SERVE_PID=$pid SHIPYARD_SERVE_ACCOUNT=local SHIPYARD_SERVE_KEY=$key \
  "$venv/bin/python" scripts/bench/serve_sdk.py "${1:-10000}" "${2:-8}"
