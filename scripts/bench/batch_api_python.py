#!/usr/bin/env python3
"""Benchmark baseline: submit N tasks with the Python `azure-batch` SDK (15.1.0) to the strict
local Batch server, and print tasks/s and this process's peak RSS as one JSON line.

Run by scripts/bench-batch-api.sh; the account key comes from BENCH_BATCH_KEY. The task shape
matches crates/batch-api/benches/submit.rs: a resource file and two environment settings.
"""
import argparse
import json
import os
import resource
import sys
import time

from azure.core.credentials import AzureNamedKeyCredential
from azure.batch import BatchClient, models


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--account", required=True)
    p.add_argument("--job", default="bench-python")
    p.add_argument("--tasks", type=int, default=10000)
    p.add_argument("--concurrency", type=int, default=8)
    a = p.parse_args()
    key = os.environ["BENCH_BATCH_KEY"]
    client = BatchClient(endpoint=a.url, credential=AzureNamedKeyCredential(a.account, key))
    client.create_job(
        models.BatchJobCreateOptions(id=a.job, pool_info=models.BatchPoolInfo(pool_id="bench-pool"))
    )
    tasks = [
        models.BatchTaskCreateOptions(
            id=f"task-{i:05}",
            command_line=f"/bin/bash -c 'sha256sum inputs/input-{i:05}.dat'",
            resource_files=[
                models.ResourceFile(
                    http_url=f"https://benchstore.blob.core.windows.net/inputs/input-{i:05}.dat",
                    file_path=f"inputs/input-{i:05}.dat",
                )
            ],
            environment_settings=[
                models.EnvironmentSetting(name="TASK_INDEX", value=str(i)),
                models.EnvironmentSetting(name="OMP_NUM_THREADS", value="2"),
            ],
        )
        for i in range(a.tasks)
    ]
    started = time.perf_counter()
    result = client.create_tasks(a.job, tasks, max_concurrency=a.concurrency)
    secs = time.perf_counter() - started
    # create_tasks raises CreateTasksError if any task failed; count the successes anyway.
    ok = sum(1 for r in (result.result_values or []) if str(r.status).lower().endswith("success"))
    if ok != a.tasks:
        print(f"only {ok} of {a.tasks} tasks reported success", file=sys.stderr)
        return 1
    print(
        json.dumps(
            {
                "client": "python azure-batch 15.1.0",
                "tasks": a.tasks,
                "seconds": secs,
                "tasks_per_sec": a.tasks / secs,
                "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                "concurrency": a.concurrency,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
