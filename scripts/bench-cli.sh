#!/usr/bin/env bash
# Benchmarks of the shipyard CLI (not tests). Targets from issue 7:
#   - `shipyard --help` under 20 ms
#   - `--dry-run` of a job with 10,000 tasks under 1 s (plan + render 100 Task_AddCollection bodies)
# Uses the release build and hyperfine (Debian: `apt-get install -y hyperfine`). Prints the mean
# times and PASS/FAIL against the targets; exits non-zero if a target is missed.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

command -v hyperfine >/dev/null || { echo "hyperfine is missing: apt-get install -y hyperfine" >&2; exit 1; }
command -v python3 >/dev/null || { echo "python3 is missing" >&2; exit 1; }

cargo build --release -q -p shipyard-cli
bin="$repo/target/release/shipyard"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# A bag of 10,000 container tasks on a native pool.
python3 - "$work/bag10k.toml" <<'EOF'
import sys
with open(sys.argv[1], "w") as f:
    f.write('[pool_specification]\nid = "bench"\nvm_count = 4\ntask_slots_per_node = 8\n')
    f.write('[pool_specification.vm_configuration.platform_image]\n')
    f.write('publisher = "microsoft-dsvm"\noffer = "ubuntu-hpc"\nsku = "2204"\n')
    f.write('node_agent_sku_id = "batch.node.ubuntu 22.04"\nnative = true\n')
    f.write('[[job_specifications]]\nid = "bag10k"\nauto_complete = true\n')
    for i in range(10000):
        f.write(f'[[job_specifications.tasks]]\nid = "t{i:05d}"\nimage = "shipyard/mpi:bookworm"\n')
        f.write(f'command = "/bin/sh -c \'echo {i}\'"\n')
EOF

# Sanity: the dry run really renders 10,000 tasks.
n=$("$bin" --target azure --dry-run --output json -c "$work/bag10k.toml" jobs add \
  | python3 -c 'import json,sys; r=json.load(sys.stdin); print(sum(len(x["body"].get("value", [])) for x in r if x["definition"]=="TaskAddCollectionParameter"))')
[ "$n" = 10000 ] || { echo "dry run rendered $n tasks, expected 10000" >&2; exit 1; }

hyperfine -N --warmup 5 --runs 50 --export-json "$work/help.json" "$bin --help" >&2
hyperfine --warmup 2 --runs 10 --export-json "$work/dry.json" \
  "$bin --target azure --dry-run --output json -c $work/bag10k.toml jobs add > /dev/null" >&2

python3 - "$work/help.json" "$work/dry.json" <<'EOF'
import json, sys
def mean_ms(path):
    return json.load(open(path))["results"][0]["mean"] * 1000
help_ms, dry_ms = mean_ms(sys.argv[1]), mean_ms(sys.argv[2])
ok = True
for name, v, limit in (("shipyard --help", help_ms, 20.0), ("--dry-run, 10,000 tasks", dry_ms, 1000.0)):
    status = "PASS" if v < limit else "FAIL"
    ok &= v < limit
    print(f"{name:28s} mean {v:8.1f} ms  (target < {limit:.0f} ms)  {status}")
sys.exit(0 if ok else 1)
EOF
