"""Bench: the azure-batch 15.1.0 SDK's create_tasks of N tasks into `shipyard serve`, then list them paged.

Environment as sdk_flow.py; N from argv[1] (default 10000), SDK threads from argv[2] (default 8).
"""
import os
import sys
import time

from azure.batch import BatchClient, models
from azure.core.credentials import AzureNamedKeyCredential

n = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
threads = int(sys.argv[2]) if len(sys.argv) > 2 else 8
client = BatchClient(os.environ["SHIPYARD_SERVE_URL"],
                     AzureNamedKeyCredential(os.environ["SHIPYARD_SERVE_ACCOUNT"], os.environ["SHIPYARD_SERVE_KEY"]))
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
listed = sum(1 for _ in client.list_tasks(job))
t2 = time.perf_counter()
assert listed == n, listed
print(f"create_tasks: {n} tasks in {t1 - t0:.3f} s = {n / (t1 - t0):.0f} tasks/s (SDK threads {threads})")
print(f"list_tasks: {listed} tasks in {t2 - t1:.3f} s ({(listed + 999) // 1000} pages)")
client.begin_delete_job(job, polling_interval=1).result()
client.begin_delete_pool(job, polling_interval=1).result()
