#!/usr/bin/env bash
# Benchmark (not a test): end-to-end time of an Open MPI hello job on 2, 4 and 8 nodes through
# the local backend (release build of the `local_hello` example of shipyard-local) against a
# hand-written docker CLI script doing the same work (scripts/bench/local-baseline.sh: each node
# `docker run -d` one after another, `docker exec` mpirun, `docker rm -f`), measured in the same
# run, alternating, median of REPEAT runs each. Prints ratios (local / script; lower is better).
# The `engine_ms` column is what `shipyard run` does by default: the CLI (release build) on the
# local engine, the job creating its container pool and deleting it at the end (cold), through
# the same Batch client as --target azure; `engine` is its ratio to the script.
#
# Usage: bash scripts/bench-local.sh            (REPEAT=3 NODES="2 4 8" IMAGE=... to override)
# Targets (issue 6): <= 1.1x at 2 nodes, <= 0.8x at 8 nodes.
set -euo pipefail
cd "$(dirname "$0")/.."
REPEAT=${REPEAT:-3}
NODES=${NODES:-"2 4 8"}
IMAGE=${IMAGE:-shipyard/mpi:bookworm}

docker image inspect "$IMAGE" >/dev/null 2>&1 || {
  echo "image $IMAGE missing: run bash scripts/build-image.sh (or scripts/setup.sh)" >&2
  exit 1
}
echo "building the local_hello example and the CLI (release)..." >&2
cargo build --release -q -p shipyard-local --example local_hello
cargo build --release -q -p shipyard-cli --bin shipyard
TARGET=${CARGO_TARGET_DIR:-target}
BIN="$TARGET/release/examples/local_hello"
SHIPYARD="$TARGET/release/shipyard"
STATE=$(mktemp -d)
trap 'rm -rf "$STATE"' EXIT

now_ms() { date +%s%3N; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

run_local() {
  local n=$1 t0 t1
  t0=$(now_ms)
  "$BIN" --job "bench-local-$n-$$-$RANDOM" --nodes "$n" --image "$IMAGE" --quiet \
    --state-dir "$STATE" --label shipyard.bench=1 >"$STATE/out" 2>"$STATE/err" || {
    cat "$STATE/err" >&2
    return 1
  }
  t1=$(now_ms)
  grep -q "allreduce sum=" "$STATE/out" || { echo "local run produced no result" >&2; return 1; }
  echo $((t1 - t0))
}

run_engine() {
  local n=$1 t0 t1 id
  id="bench-engine-$n-$$-$RANDOM"
  sed -e "s/^id = \"mpipool\"/id = \"$id\"/" -e "s/^id = \"hello-openmpi\"/id = \"$id\"/" \
    -e "s/^vm_count = 3/vm_count = $n/" -e "s/^num_instances = 3/num_instances = $n/" \
    -e "s/^processes_per_node = 2/processes_per_node = 1/" examples/local-openmpi.toml >"$STATE/$id.toml"
  t0=$(now_ms)
  SHIPYARD_STATE_DIR="$STATE/sy" "$SHIPYARD" -q run "$STATE/$id.toml" >"$STATE/out" 2>"$STATE/err" || {
    cat "$STATE/err" >&2
    return 1
  }
  t1=$(now_ms)
  SHIPYARD_STATE_DIR="$STATE/sy" "$SHIPYARD" files --job "$id" --task hello --file stdout.txt \
    | grep -q "allreduce sum=" || { echo "engine run produced no result" >&2; return 1; }
  echo $((t1 - t0))
}

run_cli() {
  local n=$1 t0 t1
  t0=$(now_ms)
  bash scripts/bench/local-baseline.sh "$n" "$IMAGE" >"$STATE/out" 2>"$STATE/err" || {
    cat "$STATE/err" >&2
    return 1
  }
  t1=$(now_ms)
  grep -q "allreduce sum=" "$STATE/out" || { echo "script run produced no result" >&2; return 1; }
  echo $((t1 - t0))
}

# One warm-up of each (page cache, image layers).
run_local 2 >/dev/null
run_engine 2 >/dev/null
run_cli 2 >/dev/null

printf '%-6s %12s %12s %12s %8s %8s %8s\n' nodes local_ms engine_ms script_ms ratio engine target
for n in $NODES; do
  L=()
  E=()
  C=()
  for _ in $(seq "$REPEAT"); do
    L+=("$(run_local "$n")")
    E+=("$(run_engine "$n")")
    C+=("$(run_cli "$n")")
  done
  lm=$(printf '%s\n' "${L[@]}" | median)
  em=$(printf '%s\n' "${E[@]}" | median)
  cm=$(printf '%s\n' "${C[@]}" | median)
  ratio=$(awk -v a="$lm" -v b="$cm" 'BEGIN {printf "%.2f", a / b}')
  eratio=$(awk -v a="$em" -v b="$cm" 'BEGIN {printf "%.2f", a / b}')
  case $n in 2) target="<=1.10" ;; 8) target="<=0.80" ;; *) target="-" ;; esac
  printf '%-6s %12s %12s %12s %7sx %7sx %8s\n' "$n" "$lm" "$em" "$cm" "$ratio" "$eratio" "$target"
done
