"""The azure-batch 15.1.0 SDK against `shipyard serve`: `expand=["stats"]` on get/list of pools,
jobs and tasks, and a 2025-only property (`taskSchedulingPolicy.jobDefaultOrder`) kept.

Environment: SHIPYARD_SERVE_URL, SHIPYARD_SERVE_ACCOUNT, SHIPYARD_SERVE_KEY. Prints one
`ok: ...` line per check and `SDK EXPAND PASSED` at the end; any failure raises.
"""
import os

from azure.batch import BatchClient, models
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import HttpResponseError

client = BatchClient(os.environ["SHIPYARD_SERVE_URL"],
                     AzureNamedKeyCredential(os.environ["SHIPYARD_SERVE_ACCOUNT"], os.environ["SHIPYARD_SERVE_KEY"]))


def ok(what):
    print(f"ok: {what}", flush=True)


client.create_pool(models.BatchPoolCreateOptions(
    id="xp", vm_size="standard_d2s_v3", target_dedicated_nodes=1,
    task_scheduling_policy=models.BatchTaskSchedulingPolicy(
        node_fill_type=models.BatchNodeFillType.PACK,
        job_default_order=models.BatchJobDefaultOrder.CREATION_TIME),
    virtual_machine_configuration=models.VirtualMachineConfiguration(
        image_reference=models.BatchVmImageReference(publisher="canonical", offer="0001-com-ubuntu-server-jammy", sku="22_04-lts"),
        node_agent_sku_id="batch.node.ubuntu 22.04")))
pool = client.get_pool("xp")
assert pool.task_scheduling_policy.job_default_order.lower() == "creationtime", pool.task_scheduling_policy
ok("jobDefaultOrder kept")
assert pool.pool_statistics is None, pool.pool_statistics
pool = client.get_pool("xp", expand=["stats"])
assert pool.pool_statistics is not None and pool.pool_statistics.start_time == pool.creation_time, pool.pool_statistics
ok("pool stats only when expanded")
assert all(p.pool_statistics is not None for p in client.list_pools(expand=["stats"]))
assert all(p.pool_statistics is None for p in client.list_pools())
ok("list_pools expand")

client.create_job(models.BatchJobCreateOptions(id="xj", pool_info=models.BatchPoolInfo(pool_id="xp")))
client.create_tasks("xj", [models.BatchTaskCreateOptions(id=f"t{i}", command_line="/bin/true") for i in range(5)]
                    + [models.BatchTaskCreateOptions(id="t9", command_line="/bin/sh -c 'echo no; exit 2'")])
job = client.get_job("xj", expand=["stats"])
assert (job.job_statistics.succeeded_tasks_count, job.job_statistics.failed_tasks_count) == (5, 1), job.job_statistics
assert client.get_job("xj").job_statistics is None
ok("job stats count 5 succeeded, 1 failed")
assert [j.job_statistics.failed_tasks_count for j in client.list_jobs(expand=["stats"])] == [1]
ok("list_jobs expand")

tasks = list(client.list_tasks("xj", expand=["stats"], max_results=2))
assert len(tasks) == 6 and all(t.task_statistics is not None and t.task_statistics.wall_clock_time is not None for t in tasks), tasks
assert all(t.task_statistics is None for t in client.list_tasks("xj"))
assert client.get_task("xj", "t9", expand=["stats"]).task_statistics.wait_time is not None
ok("task stats over 3 pages")

try:
    client.get_task("xj", "t9", expand=["nodes"])
    raise AssertionError("expand=nodes accepted")
except HttpResponseError as e:
    assert e.status_code == 400 and e.error.code == "InvalidQueryParameterValue", e
    ok("expand=nodes refused")

client.begin_delete_job("xj", polling_interval=0.2).result()
client.begin_delete_pool("xp", polling_interval=0.2).result()
print("SDK EXPAND PASSED")
