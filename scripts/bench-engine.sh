#!/usr/bin/env bash
# Engine speed against the Docker CLI, measured in the same run (tests/tests/engine_bench.rs):
#   - a multi-instance MPI job on a warm pool of N nodes vs `docker exec mpirun` on containers
#     already running sshd (target <= 1.15x);
#   - a bag of trivial tasks on 4 slots vs `xargs -P4 docker run --rm` (target <= 0.6x).
# Usage: scripts/bench-engine.sh [NODES (comma-separated, default 2,8)] [BAG (default 100)]
set -euo pipefail
cd "$(dirname "$0")/.."
nodes="${1:-2,8}"
bag="${2:-100}"
export CARGO_INCREMENTAL=0
cargo build -q -p shipyard-e2e --test engine_bench
SHIPYARD_BENCH_NODES="$nodes" SHIPYARD_BENCH_BAG="$bag" \
  cargo test -q -p shipyard-e2e --test engine_bench -- --nocapture --test-threads=1 2>&1 |
  grep -E '^BENCH|panicked|test result'
