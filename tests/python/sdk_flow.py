"""The azure-batch 15.1.0 Python SDK against `shipyard serve` (unmodified apart from endpoint and key).

Environment: SHIPYARD_SERVE_URL, SHIPYARD_SERVE_ACCOUNT, SHIPYARD_SERVE_KEY. Exits non-zero on the
first failed check; prints one `ok: ...` line per step. With the in-memory backend every task
completes at once, exits with N when its command line ends in `exit N`, and its stdout.txt is
"{taskId}: {commandLine}\n".
"""
import os
import sys

from azure.batch import BatchClient, models
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError

URL = os.environ["SHIPYARD_SERVE_URL"]
ACCOUNT = os.environ["SHIPYARD_SERVE_ACCOUNT"]
KEY = os.environ["SHIPYARD_SERVE_KEY"]
POOL, JOB, N = "sdk-pool", "sdk-job", 20


def check(cond, what):
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {what}")


def error_code(e):
    return getattr(getattr(e, "error", None), "code", None)


client = BatchClient(URL, AzureNamedKeyCredential(ACCOUNT, KEY))

# (a) pool of 2 container nodes
client.create_pool(models.BatchPoolCreateOptions(
    id=POOL,
    vm_size="standard_d2s_v3",
    virtual_machine_configuration=models.VirtualMachineConfiguration(
        image_reference=models.BatchVmImageReference(
            publisher="canonical", offer="0001-com-ubuntu-server-jammy", sku="22_04-lts", version="latest"),
        node_agent_sku_id="batch.node.ubuntu 22.04",
        container_configuration=models.BatchContainerConfiguration(
            type="dockerCompatible", container_image_names=["ubuntu:22.04"]),
    ),
    target_dedicated_nodes=2,
    task_slots_per_node=1,
))
pool = client.get_pool(POOL)
check(pool.id == POOL and pool.target_dedicated_nodes == 2, "create_pool + get_pool")
check(client.pool_exists(POOL) is True, "pool_exists")
check(len(list(client.list_nodes(POOL))) == 2, "list_nodes: 2 nodes")
images = list(client.list_supported_images())
check(any(i.node_agent_sku_id == "batch.node.ubuntu 22.04" for i in images), "list_supported_images")

client.create_job(models.BatchJobCreateOptions(id=JOB, pool_info=models.BatchPoolInfo(pool_id=POOL)))
try:
    client.create_job(models.BatchJobCreateOptions(id=JOB, pool_info=models.BatchPoolInfo(pool_id=POOL)))
    check(False, "second create_job fails")
except ResourceExistsError as e:
    check(error_code(e) == "JobExists", f"second create_job: JobExists ({error_code(e)})")

tasks = [
    models.BatchTaskCreateOptions(id=f"task-{i:02d}", command_line=f"/bin/sh -c 'echo task {i}; exit {i % 3}'")
    for i in range(N)
]
result = client.create_tasks(JOB, tasks)
check(len(result.result_values) == N and all(r.status == "success" for r in result.result_values),
      "create_tasks: 20 tasks added")

listed = list(client.list_tasks(JOB, max_results=7))  # 3 pages through odata.nextLink
check(sorted(t.id for t in listed) == [t.id for t in tasks], "list_tasks paged (maxresults=7)")
check(all(t.state == "completed" for t in listed), "every task completed")
for t in listed:
    i = int(t.id.split("-")[1])
    check(t.execution_info.exit_code == i % 3, f"{t.id}: exit code {i % 3}")
    out = b"".join(client.download_task_file(JOB, t.id, "stdout.txt"))
    check(out == f"{t.id}: {t.command_line}\n".encode(), f"{t.id}: stdout.txt")
props = client.get_task_file_properties(JOB, "task-00", "stdout.txt")
check(props is not None, "get_task_file_properties")
part = b"".join(client.download_task_file(JOB, "task-00", "stdout.txt", ocp_range="bytes=0-3"))
check(part == b"task", f"ocp-range bytes=0-3 ({part!r})")
failed = list(client.list_tasks(JOB, filter="executionInfo/exitCode ne 0"))
check(len(failed) == len([i for i in range(N) if i % 3]), "$filter executionInfo/exitCode ne 0")
counts = client.get_job_task_counts(JOB)
check(counts.task_counts.completed == N, "get_job_task_counts")

try:
    client.create_task(JOB, models.BatchTaskCreateOptions(id="task-00", command_line="true"))
    check(False, "duplicate create_task fails")
except ResourceExistsError as e:
    check(error_code(e) == "TaskExists", "duplicate create_task: TaskExists")

bad = BatchClient(URL, AzureNamedKeyCredential(ACCOUNT, "d3Jvbmcta2V5LXdyb25nLWtleQ=="))
try:
    bad.get_pool(POOL)
    check(False, "wrong key refused")
except HttpResponseError as e:
    check(e.status_code == 403 and error_code(e) == "AuthenticationFailed", "wrong key: 403 AuthenticationFailed")

# (c) deletion leaves nothing behind: the SDK polls until 404
client.begin_delete_job(JOB, polling_interval=1).result()
try:
    client.get_job(JOB)
    check(False, "job gone")
except ResourceNotFoundError as e:
    check(error_code(e) == "JobNotFound", "job deleted (404 JobNotFound)")
client.begin_delete_pool(POOL, polling_interval=1).result()
try:
    client.get_pool(POOL)
    check(False, "pool gone")
except ResourceNotFoundError as e:
    # (15.1.0's pool_exists raises on the 404 instead of returning False: its
    # BatchExceptionPolicy turns every non-2xx into an exception, so get_pool is used.)
    check(error_code(e) == "PoolNotFound", "pool deleted (404 PoolNotFound)")
check(list(client.list_pools()) == [] and list(client.list_jobs()) == [], "nothing left")
print("SDK FLOW PASSED")
