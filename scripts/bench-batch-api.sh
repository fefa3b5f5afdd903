#!/usr/bin/env bash
# Benchmark: submit 10,000 tasks (each with a resource file and environment settings) through
# add_task_collection to the strict local Batch server, with shipyard's Rust client and with the
# Python azure-batch SDK (15.1.0, from PyPI) against the same server in the same run. Prints
# tasks/s and each client process's peak RSS, and the throughput ratio.
#
#   scripts/bench-batch-api.sh            # TASKS=10000 RUNS=3 CONCURRENCY=8
#
# The server, the Rust client and the Python client run as three separate processes, so each
# client's peak RSS (VmHWM / ru_maxrss) is its own. The best of RUNS runs is reported per client.
set -euo pipefail
cd "$(dirname "$0")/.."

TASKS=${TASKS:-10000}
RUNS=${RUNS:-3}
CONCURRENCY=${CONCURRENCY:-8}
VENV=${BENCH_VENV:-target/bench-venv}
PY_SDK=azure-batch==15.1.0

echo "== building (release)" >&2
BIN=$(cargo bench -p shipyard-batch-api --bench submit --no-run --message-format=json 2>/dev/null \
  | jq -r 'select(.reason == "compiler-artifact" and .target.name == "submit" and .executable != null) | .executable' \
  | tail -1)
[[ -x "$BIN" ]] || { echo "bench binary not built" >&2; exit 1; }

if ! "$VENV/bin/python" -c "import azure.batch" 2>/dev/null; then
  echo "== installing $PY_SDK into $VENV" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "$PY_SDK"
fi
PY_VERSION=$("$VENV/bin/python" -c "import azure.batch; print(azure.batch.__version__)" 2>/dev/null || echo "?")

# The Python SDK 15.1.0 speaks api-version 2025-06-01: the server accepts it (bodies still
# validated strictly against the 2024-07-01.20.0 spec) for this run only.
coproc SERVER { exec "$BIN" --serve --extra-api-version 2025-06-01; }
SERVER_PID=$SERVER_PID
trap 'echo quit >&"${SERVER[1]}" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true' EXIT
read -r INFO <&"${SERVER[0]}"
URL=$(jq -r .url <<<"$INFO")
ACCOUNT=$(jq -r .account <<<"$INFO")
BENCH_BATCH_KEY=$(jq -r .key <<<"$INFO")
export BENCH_BATCH_KEY
echo "== strict server at $URL (pid $SERVER_PID); $TASKS tasks, concurrency $CONCURRENCY, best of $RUNS" >&2

count() {
  echo "count $1" >&"${SERVER[1]}"
  local n
  read -r n <&"${SERVER[0]}"
  echo "$n"
}

best_rust=""; best_py=""
run_rust() {
  r=$("$BIN" --client --url "$URL" --account "$ACCOUNT" --job "bench-rust-$run" --tasks "$TASKS" --concurrency "$CONCURRENCY")
  [[ $(count "bench-rust-$run") == "$TASKS" ]] || { echo "rust run $run: server has $(count "bench-rust-$run") tasks" >&2; exit 1; }
}
run_python() {
  p=$("$VENV/bin/python" scripts/bench/batch_api_python.py --url "$URL" --account "$ACCOUNT" --job "bench-python-$run" --tasks "$TASKS" --concurrency "$CONCURRENCY")
  [[ $(count "bench-python-$run") == "$TASKS" ]] || { echo "python run $run: server has $(count "bench-python-$run") tasks" >&2; exit 1; }
}
for run in $(seq 1 "$RUNS"); do
  # Alternate who goes first: the server's state grows with every run.
  if (( run % 2 )); then run_rust; run_python; else run_python; run_rust; fi
  echo "run $run: rust $(jq -r '"\(.tasks_per_sec|floor) tasks/s, \(.peak_rss_kb/1024|floor) MB"' <<<"$r");" \
       "python $(jq -r '"\(.tasks_per_sec|floor) tasks/s, \(.peak_rss_kb/1024|floor) MB"' <<<"$p")" >&2
  if [[ -z $best_rust ]] || [[ $(jq -n "$r.tasks_per_sec > $best_rust.tasks_per_sec") == true ]]; then best_rust=$r; fi
  if [[ -z $best_py ]] || [[ $(jq -n "$p.tasks_per_sec > $best_py.tasks_per_sec") == true ]]; then best_py=$p; fi
done

rust_tps=$(jq -r .tasks_per_sec <<<"$best_rust"); py_tps=$(jq -r .tasks_per_sec <<<"$best_py")
rust_mb=$(jq -r '.peak_rss_kb/1024' <<<"$best_rust"); py_mb=$(jq -r '.peak_rss_kb/1024' <<<"$best_py")
ratio=$(jq -n "$rust_tps / $py_tps")
printf '\n%-34s %12s %14s\n' "client ($TASKS tasks)" "tasks/s" "peak RSS (MB)"
printf '%-34s %12.0f %14.1f\n' "shipyard-batch-api (Rust)" "$rust_tps" "$rust_mb"
printf '%-34s %12.0f %14.1f\n' "azure-batch $PY_VERSION (Python)" "$py_tps" "$py_mb"
printf 'throughput ratio Rust/Python: %.2fx (target >= 3x); Rust peak RSS %.1f MB (target < 100 MB)\n' "$ratio" "$rust_mb"
