"""Bench of `shipyard serve` with the azure-batch 15.1.0 SDK (run by scripts/bench-serve.sh).

create_tasks of N tasks (argv[1], default 10000) with T SDK threads (argv[2], default 8), then
the same N tasks listed paged three ways in this run, best of `SHIPYARD_BENCH_REPEAT` (default 3):
  raw   - the SDK's own pipeline (Shared Key, retries) GETting every page and parsing its JSON,
          without building models: what the server and the transport cost;
  sdk   - `client.list_tasks(job)`, the SDK's models built for every task (the target: < 1 s);
  model - the SDK's model building alone, over the pages `raw` fetched.
Wall and CPU (this process) times are printed with the ratios sdk/raw and model/sdk, so the
server's share and the client's share of a listing are read from one run on a busy machine.
"""
import json
import os
import sys
import time

from azure.batch import BatchClient, models
from azure.batch._utils.model_base import _deserialize
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.rest import HttpRequest

n = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
threads = int(sys.argv[2]) if len(sys.argv) > 2 else 8
repeat = int(os.environ.get("SHIPYARD_BENCH_REPEAT", "3"))
url = os.environ["SHIPYARD_SERVE_URL"]
client = BatchClient(url, AzureNamedKeyCredential(os.environ["SHIPYARD_SERVE_ACCOUNT"], os.environ["SHIPYARD_SERVE_KEY"]))
job = f"bench-{int(time.time() * 1000)}"
client.create_pool(models.BatchPoolCreateOptions(
    id=job, vm_size="standard_d2s_v3", target_dedicated_nodes=1,
    virtual_machine_configuration=models.VirtualMachineConfiguration(
        image_reference=models.BatchVmImageReference(publisher="canonical", offer="0001-com-ubuntu-server-jammy", sku="22_04-lts"),
        node_agent_sku_id="batch.node.ubuntu 22.04")))
client.create_job(models.BatchJobCreateOptions(id=job, pool_info=models.BatchPoolInfo(pool_id=job)))
tasks = [models.BatchTaskCreateOptions(id=f"t{i:06d}", command_line=f"/bin/echo {i}") for i in range(n)]
t0 = time.perf_counter()
res = client.create_tasks(job, tasks, max_concurrency=threads)
t1 = time.perf_counter()
assert len(res.result_values) == n and all(r.status == "success" for r in res.result_values)
print(f"create_tasks: {n} tasks in {t1 - t0:.3f} s = {n / (t1 - t0):.0f} tasks/s (SDK threads {threads})")


def server_cpu():
    """CPU seconds the server process has used (SHIPYARD_SERVE_PID), or 0 when unknown."""
    pid = os.environ.get("SHIPYARD_SERVE_PID")
    if not pid:
        return 0.0
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed(fn):
    """(result, wall s, cpu s, server cpu s) of the best of `repeat` runs (by wall time)."""
    best = None
    for _ in range(repeat):
        w, c, s = time.perf_counter(), time.process_time(), server_cpu()
        out = fn()
        run = (out, time.perf_counter() - w, time.process_time() - c, server_cpu() - s)
        best = run if best is None or run[1] < best[1] else best
    return best


def raw_pages():
    pages, link = [], f"{url}/jobs/{job}/tasks?api-version=2025-06-01"
    while link:
        r = client.send_request(HttpRequest("GET", link))
        r.raise_for_status()
        body = r.json()
        pages.append(body["value"])
        link = body.get("odata.nextLink")
    return pages


pages, raw_wall, raw_cpu, raw_srv = timed(raw_pages)
assert sum(len(p) for p in pages) == n
listed, sdk_wall, sdk_cpu, sdk_srv = timed(lambda: sum(1 for _ in client.list_tasks(job)))
assert listed == n, listed
_, model_wall, model_cpu, _ = timed(lambda: [_deserialize(list[models.BatchTask], p) for p in pages])
size = len(json.dumps(pages[0]).encode())
print(f"list raw: {n} tasks in {raw_wall:.3f} s (client cpu {raw_cpu:.3f} s, server cpu {raw_srv:.2f} s; {len(pages)} pages, ~{size // 1024} KiB each)")
print(f"list_tasks: {listed} tasks in {sdk_wall:.3f} s (client cpu {sdk_cpu:.3f} s, server cpu {sdk_srv:.2f} s; target < 1 s)")
print(f"model building alone: {model_wall:.3f} s (cpu {model_cpu:.3f} s)")
print(f"ratios: list_tasks/raw = {sdk_wall / raw_wall:.2f}, model/list_tasks = {model_wall / sdk_wall:.2f}; "
      f"server+transport ~ {max(sdk_wall - model_wall, 0):.3f} s of list_tasks")
client.begin_delete_job(job, polling_interval=1).result()
client.begin_delete_pool(job, polling_interval=1).result()
