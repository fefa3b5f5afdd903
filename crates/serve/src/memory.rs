//! [`MemoryBackend`]: an in-memory [`Backend`] that completes every task the moment it is added.
//!
//! For tests and benchmarks of the REST layer, not for running work. Conventions:
//! - a pool gets `targetDedicatedNodes + targetLowPriorityNodes` idle nodes `node-0`, `node-1`, …
//!   and is `steady` at once;
//! - a task completes on add; its exit code is `N` when its command line ends with `exit N`
//!   (`0` otherwise; non-zero gives `result: failure` with `FailureExitCode`), it ran on
//!   `node-0`, its `stdout.txt` is `"{taskId}: {commandLine}\n"` and its `stderr.txt` is empty
//!   (written under the backend's directory the first time they are read);
//! - a job with `onAllTasksComplete: terminatejob` completes once it has tasks and all are done;
//! - deleted pools and jobs stay `deleting` for [`MemoryBackend::delete_delay`], then vanish.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::{json, Map, Value};
use shipyard_batch_api::models::{
    CloudJob, CloudPool, CloudTask, ComputeNode, JobAddParameter, JobPatchParameter,
    JobPreparationAndReleaseTaskExecutionInformation, NodeFile, PoolAddParameter,
    PoolPatchParameter, PoolResizeParameter, SubtaskInformation, TaskAddParameter, TaskAddResult,
    TaskCountsResult,
};

use crate::backend::{Backend, BackendError, BackendResult, BoxFuture, FileContent};

#[derive(Debug, Default)]
struct State {
    pools: BTreeMap<String, Value>,
    jobs: BTreeMap<String, JobRec>,
    etag: u64,
}

#[derive(Debug)]
struct JobRec {
    body: Value,
    tasks: BTreeMap<String, CloudTask>,
}

/// The in-memory backend (cheap to clone; clones share state).
#[derive(Debug, Clone)]
pub struct MemoryBackend {
    state: Arc<Mutex<State>>,
    dir: PathBuf,
    delete_delay: Duration,
}

fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn internal(e: impl std::fmt::Display) -> BackendError {
    BackendError::Internal {
        message: e.to_string(),
    }
}

fn typed<T: DeserializeOwned>(v: Value) -> BackendResult<T> {
    serde_json::from_value(v).map_err(internal)
}

fn to_map<T: serde::Serialize>(v: &T) -> BackendResult<Map<String, Value>> {
    match serde_json::to_value(v).map_err(internal)? {
        Value::Object(m) => Ok(m),
        _ => Err(internal("model did not serialize to an object")),
    }
}

fn not_found(code: &'static str, id: &str) -> BackendError {
    BackendError::not_found(code, id)
}

/// The exit code by convention: the command line ends with `exit N`.
fn exit_code(command_line: &str) -> i32 {
    let mut words = command_line.split_whitespace().rev();
    match (words.next(), words.next()) {
        (Some(n), Some("exit")) => n
            .trim_matches(|c| c == '\'' || c == '"')
            .parse()
            .unwrap_or(1),
        _ => 0,
    }
}

impl MemoryBackend {
    /// A backend keeping task files under `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> MemoryBackend {
        MemoryBackend {
            state: Arc::default(),
            dir: dir.into(),
            delete_delay: Duration::from_millis(300),
        }
    }

    /// How long deleted pools and jobs stay `deleting` (default 300 ms).
    pub fn delete_delay(mut self, d: Duration) -> MemoryBackend {
        self.delete_delay = d;
        self
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn schedule_removal(&self, pool: Option<String>, job: Option<String>) {
        let me = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(me.delete_delay).await;
            let mut st = me.lock();
            if let Some(p) = pool {
                st.pools.remove(&p);
            }
            if let Some(j) = job {
                st.jobs.remove(&j);
            }
        });
    }

    fn task_dir(&self, job: &str, task: &str) -> PathBuf {
        self.dir.join("jobs").join(job).join(task)
    }

    fn nodes_of(pool: &Value) -> Vec<Value> {
        let n = pool["currentDedicatedNodes"].as_i64().unwrap_or(0)
            + pool["currentLowPriorityNodes"].as_i64().unwrap_or(0);
        let pool_id = pool["id"].as_str().unwrap_or("");
        (0..n.max(0))
            .map(|i| {
                json!({
                    "id": format!("node-{i}"),
                    "url": format!("{}/nodes/node-{i}", pool["url"].as_str().unwrap_or("")),
                    "state": "idle",
                    "schedulingState": "enabled",
                    "stateTransitionTime": pool["creationTime"],
                    "allocationTime": pool["creationTime"],
                    "ipAddress": format!("127.0.0.{}", i + 1),
                    "affinityId": format!("{pool_id}:node-{i}"),
                    "vmSize": pool["vmSize"],
                    "totalTasksRun": 0,
                    "runningTasksCount": 0,
                    "runningTaskSlotsCount": 0,
                    "totalTasksSucceeded": 0,
                    "isDedicated": true,
                })
            })
            .collect()
    }

    fn next_etag(st: &mut State) -> String {
        st.etag += 1;
        format!("0x8DD{:013X}", st.etag)
    }

    fn complete_job_if_done(job: &mut JobRec) {
        let done = !job.tasks.is_empty()
            && job
                .tasks
                .values()
                .all(|t| t.state.as_ref().map(|s| s.as_str()) == Some("completed"));
        if done
            && job.body["onAllTasksComplete"]
                .as_str()
                .is_some_and(|s| s.eq_ignore_ascii_case("terminatejob"))
            && job.body["state"] == "active"
        {
            job.body["state"] = json!("completed");
            job.body["previousState"] = json!("active");
            job.body["stateTransitionTime"] = json!(now());
            job.body["executionInfo"]["endTime"] = json!(now());
            job.body["executionInfo"]["terminateReason"] = json!("AllTasksComplete");
        }
    }

    fn make_task(&self, job: &str, p: &TaskAddParameter, etag: String) -> BackendResult<CloudTask> {
        let mut m = to_map(p)?;
        let t = now();
        let code = exit_code(&p.command_line);
        let url = format!("/jobs/{job}/tasks/{}", p.id);
        let mut exec = json!({
            "startTime": t, "endTime": t, "exitCode": code,
            "retryCount": 0, "requeueCount": 0,
            "result": if code == 0 { "success" } else { "failure" },
        });
        if code != 0 {
            exec["failureInfo"] = json!({
                "category": "usererror", "code": "FailureExitCode",
                "message": format!("The task process exited with an unexpected exit code {code}"),
            });
        }
        for (k, v) in [
            ("url", json!(url)),
            ("eTag", json!(etag)),
            ("lastModified", json!(t)),
            ("creationTime", json!(t)),
            ("state", json!("completed")),
            ("stateTransitionTime", json!(t)),
            ("previousState", json!("running")),
            ("previousStateTransitionTime", json!(t)),
            ("executionInfo", exec),
            (
                "nodeInfo",
                json!({"nodeId": "node-0", "taskRootDirectory": format!("workitems/{job}/job-1/{}", p.id)}),
            ),
        ] {
            m.insert(k.into(), v);
        }
        typed(Value::Object(m))
    }

    fn pool_value(&self, id: &str) -> BackendResult<Value> {
        self.lock()
            .pools
            .get(id)
            .cloned()
            .ok_or_else(|| not_found("PoolNotFound", id))
    }

    fn task_record(&self, job: &str, task: &str) -> BackendResult<CloudTask> {
        let st = self.lock();
        let j = st
            .jobs
            .get(job)
            .ok_or_else(|| not_found("JobNotFound", job))?;
        j.tasks
            .get(task)
            .cloned()
            .ok_or_else(|| not_found("TaskNotFound", task))
    }
}

fn file_entry(base: &str, name: &str, len: u64, modified: &str) -> BackendResult<NodeFile> {
    typed(json!({
        "name": name,
        "url": format!("{base}/files/{name}"),
        "isDirectory": false,
        "properties": {
            "creationTime": modified, "lastModified": modified,
            "contentLength": len, "contentType": "text/plain", "fileMode": "0o100644",
        },
    }))
}

fn stdout_of(t: &CloudTask) -> String {
    format!(
        "{}: {}\n",
        t.id.as_deref().unwrap_or(""),
        t.command_line.as_deref().unwrap_or("")
    )
}

fn materialize(path: &Path, data: &[u8]) -> BackendResult<FileContent> {
    if !path.exists() {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(internal)?;
        }
        std::fs::write(path, data).map_err(internal)?;
    }
    let meta = std::fs::metadata(path).map_err(internal)?;
    let modified = meta
        .modified()
        .map(time::OffsetDateTime::from)
        .unwrap_or_else(|_| time::OffsetDateTime::now_utc());
    Ok(FileContent {
        path: path.to_path_buf(),
        len: meta.len(),
        modified,
    })
}

impl Backend for MemoryBackend {
    fn add_pool(&self, p: PoolAddParameter) -> BoxFuture<'_, BackendResult<()>> {
        Box::pin(async move {
            let mut m = to_map(&p)?;
            let mut st = self.lock();
            if st.pools.contains_key(&p.id) {
                return Err(BackendError::conflict("PoolExists", p.id.clone()));
            }
            let t = now();
            let etag = Self::next_etag(&mut st);
            let dedicated = m.get("targetDedicatedNodes").cloned().unwrap_or(json!(0));
            let low = m.get("targetLowPriorityNodes").cloned().unwrap_or(json!(0));
            for (k, v) in [
                ("url", json!(format!("/pools/{}", p.id))),
                ("eTag", json!(etag)),
                ("lastModified", json!(t)),
                ("creationTime", json!(t)),
                ("state", json!("active")),
                ("stateTransitionTime", json!(t)),
                ("allocationState", json!("steady")),
                ("allocationStateTransitionTime", json!(t)),
                ("currentDedicatedNodes", dedicated.clone()),
                ("currentLowPriorityNodes", low.clone()),
                ("targetDedicatedNodes", dedicated),
                ("targetLowPriorityNodes", low),
            ] {
                m.insert(k.into(), v);
            }
            st.pools.insert(p.id.clone(), Value::Object(m));
            Ok(())
        })
    }

    fn get_pool(&self, id: &str) -> BackendResult<CloudPool> {
        typed(self.pool_value(id)?)
    }

    fn list_pools(&self) -> BackendResult<Vec<CloudPool>> {
        let pools: Vec<Value> = self.lock().pools.values().cloned().collect();
        pools.into_iter().map(typed).collect()
    }

    fn delete_pool<'a>(&'a self, id: &'a str) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(async move {
            {
                let mut st = self.lock();
                let etag = Self::next_etag(&mut st);
                let p = st
                    .pools
                    .get_mut(id)
                    .ok_or_else(|| not_found("PoolNotFound", id))?;
                p["state"] = json!("deleting");
                p["eTag"] = json!(etag);
            }
            self.schedule_removal(Some(id.to_owned()), None);
            Ok(())
        })
    }

    fn resize_pool<'a>(
        &'a self,
        id: &'a str,
        r: PoolResizeParameter,
    ) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(async move {
            let r = to_map(&r)?;
            let mut st = self.lock();
            let etag = Self::next_etag(&mut st);
            let p = st
                .pools
                .get_mut(id)
                .ok_or_else(|| not_found("PoolNotFound", id))?;
            if p["state"] == "deleting" {
                return Err(BackendError::conflict("PoolBeingDeleted", id.to_owned()));
            }
            for (target, current) in [
                ("targetDedicatedNodes", "currentDedicatedNodes"),
                ("targetLowPriorityNodes", "currentLowPriorityNodes"),
            ] {
                if let Some(n) = r.get(target) {
                    p[target] = n.clone();
                    p[current] = n.clone();
                }
            }
            p["eTag"] = json!(etag);
            Ok(())
        })
    }

    fn patch_pool(&self, id: &str, patch: PoolPatchParameter) -> BackendResult<()> {
        let patch = to_map(&patch)?;
        let mut st = self.lock();
        let etag = Self::next_etag(&mut st);
        let p = st
            .pools
            .get_mut(id)
            .ok_or_else(|| not_found("PoolNotFound", id))?;
        for (k, v) in patch {
            p[k.as_str()] = v;
        }
        p["eTag"] = json!(etag);
        p["lastModified"] = json!(now());
        Ok(())
    }

    fn list_nodes(&self, pool: &str) -> BackendResult<Vec<ComputeNode>> {
        Self::nodes_of(&self.pool_value(pool)?)
            .into_iter()
            .map(typed)
            .collect()
    }

    fn get_node(&self, pool: &str, node: &str) -> BackendResult<ComputeNode> {
        Self::nodes_of(&self.pool_value(pool)?)
            .into_iter()
            .find(|n| n["id"] == node)
            .ok_or_else(|| not_found("NodeNotFound", node))
            .and_then(typed)
    }

    fn list_node_files(
        &self,
        pool: &str,
        node: &str,
        _recursive: bool,
    ) -> BackendResult<Vec<NodeFile>> {
        self.get_node(pool, node)?;
        Ok(Vec::new())
    }

    fn node_file(&self, pool: &str, node: &str, path: &str) -> BackendResult<FileContent> {
        self.get_node(pool, node)?;
        Err(not_found("FileNotFound", path))
    }

    fn add_job(&self, j: JobAddParameter) -> BoxFuture<'_, BackendResult<()>> {
        Box::pin(async move {
            let mut m = to_map(&j)?;
            let mut st = self.lock();
            if st.jobs.contains_key(&j.id) {
                return Err(BackendError::conflict("JobExists", j.id.clone()));
            }
            let t = now();
            let etag = Self::next_etag(&mut st);
            for (k, v) in [
                ("url", json!(format!("/jobs/{}", j.id))),
                ("eTag", json!(etag)),
                ("lastModified", json!(t)),
                ("creationTime", json!(t)),
                ("state", json!("active")),
                ("stateTransitionTime", json!(t)),
                (
                    "executionInfo",
                    json!({"startTime": t, "poolId": m.get("poolInfo").and_then(|p| p.get("poolId")).cloned().unwrap_or(Value::Null)}),
                ),
            ] {
                m.insert(k.into(), v);
            }
            m.entry("onAllTasksComplete").or_insert(json!("noaction"));
            m.entry("onTaskFailure").or_insert(json!("noaction"));
            m.entry("priority").or_insert(json!(0));
            st.jobs.insert(
                j.id.clone(),
                JobRec {
                    body: Value::Object(m),
                    tasks: BTreeMap::new(),
                },
            );
            Ok(())
        })
    }

    fn get_job(&self, id: &str) -> BackendResult<CloudJob> {
        let body = self
            .lock()
            .jobs
            .get(id)
            .map(|j| j.body.clone())
            .ok_or_else(|| not_found("JobNotFound", id))?;
        typed(body)
    }

    fn list_jobs(&self) -> BackendResult<Vec<CloudJob>> {
        let jobs: Vec<Value> = self.lock().jobs.values().map(|j| j.body.clone()).collect();
        jobs.into_iter().map(typed).collect()
    }

    fn patch_job<'a>(
        &'a self,
        id: &'a str,
        patch: JobPatchParameter,
    ) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(async move {
            let patch = to_map(&patch)?;
            let mut st = self.lock();
            let etag = Self::next_etag(&mut st);
            let j = st
                .jobs
                .get_mut(id)
                .ok_or_else(|| not_found("JobNotFound", id))?;
            if j.body["state"] == "completed" || j.body["state"] == "deleting" {
                return Err(BackendError::conflict("JobCompleted", id.to_owned()));
            }
            for (k, v) in patch {
                j.body[k.as_str()] = v;
            }
            j.body["eTag"] = json!(etag);
            j.body["lastModified"] = json!(now());
            Self::complete_job_if_done(j);
            Ok(())
        })
    }

    fn terminate_job<'a>(
        &'a self,
        id: &'a str,
        reason: Option<String>,
    ) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(async move {
            let mut st = self.lock();
            let etag = Self::next_etag(&mut st);
            let j = st
                .jobs
                .get_mut(id)
                .ok_or_else(|| not_found("JobNotFound", id))?;
            if j.body["state"] == "completed" {
                return Err(BackendError::conflict("JobCompleted", id.to_owned()));
            }
            let t = now();
            j.body["previousState"] = j.body["state"].clone();
            j.body["state"] = json!("completed");
            j.body["stateTransitionTime"] = json!(t);
            j.body["executionInfo"]["endTime"] = json!(t);
            j.body["executionInfo"]["terminateReason"] =
                json!(reason.unwrap_or_else(|| "UserTerminate".into()));
            j.body["eTag"] = json!(etag);
            Ok(())
        })
    }

    fn delete_job<'a>(&'a self, id: &'a str) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(async move {
            {
                let mut st = self.lock();
                let j = st
                    .jobs
                    .get_mut(id)
                    .ok_or_else(|| not_found("JobNotFound", id))?;
                j.body["state"] = json!("deleting");
            }
            let dir = self.dir.join("jobs").join(id);
            if dir.exists() {
                std::fs::remove_dir_all(&dir).map_err(internal)?;
            }
            self.schedule_removal(None, Some(id.to_owned()));
            Ok(())
        })
    }

    fn task_counts(&self, job: &str) -> BackendResult<TaskCountsResult> {
        let st = self.lock();
        let j = st
            .jobs
            .get(job)
            .ok_or_else(|| not_found("JobNotFound", job))?;
        let (mut ok, mut failed) = (0, 0);
        for t in j.tasks.values() {
            match t.execution_info.as_ref().and_then(|e| e.exit_code) {
                Some(0) => ok += 1,
                _ => failed += 1,
            }
        }
        let done = ok + failed;
        typed(json!({
            "taskCounts": {"active": 0, "running": 0, "completed": done, "succeeded": ok, "failed": failed},
            "taskSlotCounts": {"active": 0, "running": 0, "completed": done, "succeeded": ok, "failed": failed},
        }))
    }

    fn prep_release_status(
        &self,
        job: &str,
    ) -> BackendResult<Vec<JobPreparationAndReleaseTaskExecutionInformation>> {
        if !self.lock().jobs.contains_key(job) {
            return Err(not_found("JobNotFound", job));
        }
        Ok(Vec::new())
    }

    fn add_tasks<'a>(
        &'a self,
        job: &'a str,
        tasks: Vec<TaskAddParameter>,
    ) -> BoxFuture<'a, BackendResult<Vec<TaskAddResult>>> {
        Box::pin(async move {
            let mut st = self.lock();
            match st.jobs.get(job) {
                None => return Err(not_found("JobNotFound", job)),
                Some(j) if j.body["state"] != "active" => {
                    return Err(BackendError::conflict("JobCompleted", job.to_owned()))
                }
                Some(_) => {}
            }
            let mut results = Vec::with_capacity(tasks.len());
            for p in &tasks {
                let exists = st
                    .jobs
                    .get(job)
                    .is_some_and(|j| j.tasks.contains_key(&p.id));
                let result = if exists {
                    json!({"status": "clienterror", "taskId": p.id, "error": {
                        "code": "TaskExists",
                        "message": {"lang": "en-US", "value": "The specified task already exists."},
                    }})
                } else {
                    let etag = Self::next_etag(&mut st);
                    let task = self.make_task(job, p, etag.clone())?;
                    let r = json!({"status": "success", "taskId": p.id, "eTag": etag,
                        "lastModified": task.last_modified, "location": task.url});
                    if let Some(j) = st.jobs.get_mut(job) {
                        j.tasks.insert(p.id.clone(), task);
                    }
                    r
                };
                results.push(typed(result)?);
            }
            if let Some(j) = st.jobs.get_mut(job) {
                Self::complete_job_if_done(j);
            }
            Ok(results)
        })
    }

    fn get_task(&self, job: &str, task: &str) -> BackendResult<CloudTask> {
        self.task_record(job, task)
    }

    fn list_tasks(&self, job: &str) -> BackendResult<Vec<CloudTask>> {
        let st = self.lock();
        let j = st
            .jobs
            .get(job)
            .ok_or_else(|| not_found("JobNotFound", job))?;
        Ok(j.tasks.values().cloned().collect())
    }

    fn list_tasks_after(
        &self,
        job: &str,
        after: Option<&str>,
        limit: Option<usize>,
    ) -> BackendResult<Vec<CloudTask>> {
        use std::ops::Bound;
        let st = self.lock();
        let j = st
            .jobs
            .get(job)
            .ok_or_else(|| not_found("JobNotFound", job))?;
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        let range = j
            .tasks
            .range::<str, _>((from, Bound::Unbounded))
            .map(|(_, t)| t.clone());
        Ok(match limit {
            Some(n) => range.take(n).collect(),
            None => range.collect(),
        })
    }

    fn list_subtasks(&self, job: &str, task: &str) -> BackendResult<Vec<SubtaskInformation>> {
        self.task_record(job, task)?;
        Ok(Vec::new())
    }

    fn terminate_task<'a>(
        &'a self,
        job: &'a str,
        task: &'a str,
    ) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(async move { self.task_record(job, task).map(|_| ()) })
    }

    fn delete_task<'a>(&'a self, job: &'a str, task: &'a str) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(async move {
            let mut st = self.lock();
            let j = st
                .jobs
                .get_mut(job)
                .ok_or_else(|| not_found("JobNotFound", job))?;
            j.tasks
                .remove(task)
                .map(|_| ())
                .ok_or_else(|| not_found("TaskNotFound", task))
        })
    }

    fn list_task_files(
        &self,
        job: &str,
        task: &str,
        _recursive: bool,
    ) -> BackendResult<Vec<NodeFile>> {
        let t = self.task_record(job, task)?;
        let base = t.url.clone().unwrap_or_default();
        let modified = t.last_modified.clone().unwrap_or_default();
        Ok(vec![
            file_entry(&base, "stderr.txt", 0, &modified)?,
            file_entry(&base, "stdout.txt", stdout_of(&t).len() as u64, &modified)?,
        ])
    }

    fn task_file(&self, job: &str, task: &str, path: &str) -> BackendResult<FileContent> {
        let t = self.task_record(job, task)?;
        let data = match path {
            "stdout.txt" => stdout_of(&t),
            "stderr.txt" => String::new(),
            _ => return Err(not_found("FileNotFound", path)),
        };
        materialize(&self.task_dir(job, task).join(path), data.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::exit_code;

    #[test]
    fn exit_code_convention() {
        assert_eq!(exit_code("/bin/sh -c 'echo hi; exit 3'"), 3);
        assert_eq!(exit_code("/bin/sh -c echo hi; exit 3"), 3);
        assert_eq!(exit_code("echo hi"), 0);
        assert_eq!(exit_code("exit 7"), 7);
    }
}
