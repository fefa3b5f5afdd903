#!/usr/bin/env bash
# Engine speed against the Docker CLI, measured in the same run (tests/tests/engine_bench.rs):
#   - a multi-instance MPI job on an idle warm pool of N nodes (its next containers made, the
#     machine quiet) vs `docker exec mpirun` on containers already running sshd (target
#     <= 1.15x), and the same jobs back to back;
#   - a bag of trivial tasks on 4 slots vs `xargs -P4 docker run --rm` (target <= 0.6x);
#   - cold runs (pool made for the job, deleted after it) vs scripts/bench/local-baseline.sh;
#   - large bags through the engine on a host-process node kind: tasks/s and peak RSS.
# Usage: scripts/bench-engine.sh [NODES (default 2,8)] [BAG (default 100)] [COLD (default 2,8)]
#        [LARGE (default 1000,10000)]
set -euo pipefail
cd "$(dirname "$0")/.."
nodes="${1:-2,8}"
bag="${2:-100}"
cold="${3:-2,8}"
large="${4:-1000,10000}"
export CARGO_INCREMENTAL=0
cargo build -q -p shipyard-e2e --test engine_bench
SHIPYARD_BENCH_NODES="$nodes" SHIPYARD_BENCH_BAG="$bag" SHIPYARD_BENCH_COLD="$cold" \
  SHIPYARD_BENCH_LARGE_BAGS="$large" \
  cargo test -q -p shipyard-e2e --test engine_bench -- --nocapture --test-threads=1 2>&1 |
  grep -oE 'BENCH .*|panicked.*|^Error.*|test result.*'
