"""The azure-batch 15.1.0 Python SDK against `shipyard serve` over the real local engine.

Unmodified Batch user code apart from endpoint and key. Environment: SHIPYARD_SERVE_URL,
SHIPYARD_SERVE_ACCOUNT, SHIPYARD_SERVE_KEY, SHIPYARD_FILES_URL (an HTTP server with
input-NN.txt, coordination.sh, id_ed25519, id_ed25519.pub), SHIPYARD_IMAGE, SHIPYARD_ID_SUFFIX.
Phases (argv[1]):
- `flow`: (a) a container pool of 2 nodes, a job, 20 tasks with HTTP resource files, wait, read
  every task's stdout and exit code; (b) a multi-instance Open MPI task whose coordination command
  sets up sshd from commonResourceFiles; its stdout is printed between MPI-STDOUT-BEGIN/END;
  (c) job and pool deletion.
- `before-kill`: pool of 1 node, job, a task that completes, a task that keeps running.
- `after-restart`: everything is still there, the running task failed with a reason; cleanup.
Prints one `ok: ...` line per check; exits non-zero on the first failed check.
"""
import os
import sys
import time

from azure.batch import BatchClient, models
from azure.core.exceptions import ResourceNotFoundError
from azure.core.credentials import AzureNamedKeyCredential

URL = os.environ["SHIPYARD_SERVE_URL"]
FILES = os.environ.get("SHIPYARD_FILES_URL", "")
IMAGE = os.environ.get("SHIPYARD_IMAGE", "shipyard/mpi:bookworm")
SUFFIX = os.environ.get("SHIPYARD_ID_SUFFIX", "")  # unique pool/job ids per test run
client = BatchClient(URL, AzureNamedKeyCredential(os.environ["SHIPYARD_SERVE_ACCOUNT"],
                                                  os.environ["SHIPYARD_SERVE_KEY"]))


def check(cond, what):
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr, flush=True)
        sys.exit(1)
    print(f"ok: {what}", flush=True)


def wait(what, secs, cond):
    t0 = time.time()
    while True:
        v = cond()
        if v:
            return v
        if time.time() - t0 > secs:
            check(False, f"timed out after {secs} s waiting for {what}")
        time.sleep(0.5)


def create_pool(pool_id, nodes):
    client.create_pool(models.BatchPoolCreateOptions(
        id=pool_id,
        vm_size="standard_d2s_v3",
        virtual_machine_configuration=models.VirtualMachineConfiguration(
            image_reference=models.BatchVmImageReference(
                publisher="canonical", offer="0001-com-ubuntu-server-jammy", sku="22_04-lts", version="latest"),
            node_agent_sku_id="batch.node.ubuntu 22.04",
            container_configuration=models.BatchContainerConfiguration(
                type="dockerCompatible", container_image_names=[IMAGE]),
        ),
        target_dedicated_nodes=nodes,
        task_slots_per_node=1,
    ))
    wait(f"{nodes} idle nodes", 120, lambda: len(
        [n for n in client.list_nodes(pool_id) if n.state == "idle"]) == nodes)
    check(True, f"create_pool {pool_id}: {nodes} idle nodes")


def container():
    return models.BatchTaskContainerSettings(image_name=IMAGE)


# Tasks run as the pool's admin auto-user (sshd needs root; see the report on non-admin tasks).
ADMIN = models.UserIdentity(auto_user=models.AutoUserSpecification(
    scope="pool", elevation_level="admin"))


def stdout_of(job, task):
    return b"".join(client.download_task_file(job, task, "stdout.txt")).decode()


def stdout_so_far(job, task):
    """stdout.txt, or "" while the task has not created it yet."""
    try:
        return stdout_of(job, task)
    except ResourceNotFoundError:
        return ""


def all_completed(job, n):
    tasks = list(client.list_tasks(job))
    return tasks if len(tasks) == n and all(t.state == "completed" for t in tasks) else None


def delete_everything(job, pool):
    client.begin_delete_job(job, polling_interval=1).result()
    try:
        client.get_job(job)
        check(False, "job gone")
    except ResourceNotFoundError:
        check(True, "job deleted (404)")
    client.begin_delete_pool(pool, polling_interval=1).result()
    try:
        client.get_pool(pool)
        check(False, "pool gone")
    except ResourceNotFoundError:
        check(True, "pool deleted (404)")
    check(list(client.list_pools()) == [] and list(client.list_jobs()) == [], "nothing left")


def flow():
    pool, job, n = f"eng-pool{SUFFIX}", f"eng-job{SUFFIX}", 20
    create_pool(pool, 2)
    client.create_job(models.BatchJobCreateOptions(id=job, pool_info=models.BatchPoolInfo(pool_id=pool)))
    # (a) 20 tasks, each with an HTTP resource file
    tasks = [models.BatchTaskCreateOptions(
        id=f"task-{i:02d}",
        command_line=f"/bin/bash -c 'cat input.txt; echo on $AZ_BATCH_NODE_ID; exit {i % 3}'",
        container_settings=container(),
        user_identity=ADMIN,
        resource_files=[models.ResourceFile(http_url=f"{FILES}/input-{i:02d}.txt", file_path="input.txt")],
    ) for i in range(n)]
    res = client.create_tasks(job, tasks)
    check(all(r.status == "success" for r in res.result_values), "create_tasks: 20 tasks")
    done = wait("20 completed tasks", 300, lambda: all_completed(job, n))
    nodes = set()
    for t in sorted(done, key=lambda t: t.id):
        i = int(t.id.split("-")[1])
        check(t.execution_info.exit_code == i % 3, f"{t.id}: exit code {t.execution_info.exit_code}")
        out = stdout_of(job, t.id)
        if not out.startswith(f"payload {i}\n"):
            err = b"".join(client.download_task_file(job, t.id, "stderr.txt")).decode()
            print(f"{t.id} stderr: {err}; files: {[f.name for f in client.list_task_files(job, t.id, recursive=True)]}",
                  file=sys.stderr)
        check(out.startswith(f"payload {i}\non "), f"{t.id}: stdout.txt {out!r}")
        nodes.add(out.split("on ", 1)[1].strip())
    check(len(nodes) == 2, f"tasks ran on both nodes ({sorted(nodes)})")
    # (b) multi-instance Open MPI: sshd set up by the user's coordination command
    common = [models.ResourceFile(http_url=f"{FILES}/{f}", file_path=f)
              for f in ("coordination.sh", "id_ed25519", "id_ed25519.pub")]
    mpirun = ("mpirun.openmpi --allow-run-as-root -np 4 "
              "--host $(echo $AZ_BATCH_HOST_LIST | sed \"s/,/:2,/g\"):2 "
              "--mca btl tcp,self --mca btl_tcp_if_include eth0 --mca oob_tcp_if_include eth0 "
              "-x HELLO_EXPECT_SIZE /opt/shipyard/bin/mpi-hello-openmpi")
    client.create_task(job, models.BatchTaskCreateOptions(
        id="mpi",
        command_line=f"/bin/bash -c '{mpirun}'",
        container_settings=container(),
        user_identity=ADMIN,
        environment_settings=[models.EnvironmentSetting(name="HELLO_EXPECT_SIZE", value="4")],
        multi_instance_settings=models.MultiInstanceSettings(
            number_of_instances=2,
            coordination_command_line="/bin/bash -c 'bash $AZ_BATCH_TASK_DIR/coordination.sh'",
            common_resource_files=common),
    ))
    wait("the MPI task", 300, lambda: client.get_task(job, "mpi").state == "completed")
    t = client.get_task(job, "mpi")
    out = stdout_of(job, "mpi")
    print("MPI-STDOUT-BEGIN\n" + out + "MPI-STDOUT-END", flush=True)
    if t.execution_info.exit_code != 0:
        print(b"".join(client.download_task_file(job, "mpi", "stderr.txt")).decode(), file=sys.stderr)
    check(t.execution_info.exit_code == 0 and t.execution_info.result == "success",
          f"mpi task: exit code {t.execution_info.exit_code}, failure {t.execution_info.failure_info}")
    subs = list(client.list_subtasks(job, "mpi"))
    check(len(subs) == 1 and all(s.state == "completed" for s in subs), f"list_subtasks: 1 subtask ({len(subs)})")
    # (c) deletion
    delete_everything(job, pool)


def before_kill():
    pool, job = f"kill-pool{SUFFIX}", f"kill-job{SUFFIX}"
    create_pool(pool, 1)
    client.create_job(models.BatchJobCreateOptions(id=job, pool_info=models.BatchPoolInfo(pool_id=pool)))
    client.create_task(job, models.BatchTaskCreateOptions(
        id="done", command_line="/bin/bash -c 'echo finished before the kill'", container_settings=container()))
    wait("task done", 120, lambda: client.get_task(job, "done").state == "completed")
    client.create_task(job, models.BatchTaskCreateOptions(
        id="long", command_line="/bin/bash -c 'echo started; sleep 600'", container_settings=container()))
    wait("task long running", 120, lambda: client.get_task(job, "long").state == "running"
         and "started" in stdout_so_far(job, "long"))
    print("READY-TO-KILL", flush=True)


def after_restart():
    pool, job = f"kill-pool{SUFFIX}", f"kill-job{SUFFIX}"
    check(client.get_pool(pool).id == pool, "pool survived")
    check(len([n for n in client.list_nodes(pool) if n.state == "idle"]) == 1, "its node is idle again")
    check(client.get_job(job).id == job, "job survived")
    done = client.get_task(job, "done")
    check(done.state == "completed" and done.execution_info.exit_code == 0, "completed task kept its result")
    check(stdout_of(job, "done") == "finished before the kill\n", "completed task kept its stdout")
    long = client.get_task(job, "long")
    info = long.execution_info
    check(long.state == "completed" and info.result == "failure" and info.failure_info is not None
          and info.failure_info.code and info.failure_info.message,
          f"running task failed with a reason ({info.failure_info.code if info.failure_info else None}: "
          f"{info.failure_info.message if info.failure_info else None})")
    check(stdout_of(job, "long").startswith("started"), "running task's output kept")
    # new work runs on the recovered pool
    client.create_task(job, models.BatchTaskCreateOptions(
        id="after", command_line="/bin/bash -c 'echo after restart'", container_settings=container()))
    wait("task after", 120, lambda: client.get_task(job, "after").state == "completed")
    check(stdout_of(job, "after") == "after restart\n", "new task runs after the restart")
    delete_everything(job, pool)


{"flow": flow, "before-kill": before_kill, "after-restart": after_restart}[sys.argv[1]]()
print("SDK ENGINE PASSED", flush=True)
