//! [`follow_task_file`]: a local task's output file streamed as it grows.

use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::Path;
use std::time::Duration;

use crate::error::{LocalError, Result};
use crate::store::{JobState, Store, TaskState};

/// Streams `rel` (a path inside the task directory, e.g. `stdout.txt`) of local task
/// `job`/`task` as it grows: every `poll` the bytes past the last offset go to `on_chunk`,
/// until the task is completed (or its job is, e.g. because the run that owned it died:
/// [`Store::reconcile`] is applied on every poll) and the last bytes are read. Returns the
/// file's length; a task that completes without the file is [`LocalError::Io`] naming it.
pub async fn follow_task_file(
    store: &Store,
    job: &str,
    task: &str,
    rel: &Path,
    poll: Duration,
    mut on_chunk: impl FnMut(&[u8]),
) -> Result<u64> {
    let mut offset: u64 = 0;
    loop {
        // A run killed without cleaning up: its job and tasks are marked, so this ends.
        let _ = store.reconcile();
        let record = store
            .list_tasks(job)?
            .into_iter()
            .find(|t| t.id == task)
            .ok_or_else(|| LocalError::InvalidJob {
                job: job.into(),
                field: "task".into(),
                reason: format!("no task `{task}`"),
            })?;
        let job_done = store
            .get_job(job)?
            .is_none_or(|j| j.state == JobState::Completed);
        // The state first: once it says completed, the size read next is final.
        let done = record.state == TaskState::Completed || job_done;
        let path = record.task_dir.join(rel);
        match std::fs::File::open(&path) {
            Ok(mut file) => {
                file.seek(SeekFrom::Start(offset))
                    .map_err(|e| LocalError::io(&path, e))?;
                let mut data = Vec::new();
                file.read_to_end(&mut data)
                    .map_err(|e| LocalError::io(&path, e))?;
                if !data.is_empty() {
                    on_chunk(&data);
                    offset += data.len() as u64;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !done => {}
            Err(e) => return Err(LocalError::io(&path, e)),
        }
        if done {
            return Ok(offset);
        }
        tokio::time::sleep(poll).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{JobRecord, TaskRecord};

    #[tokio::test]
    async fn bytes_arrive_once_and_the_follow_ends_with_the_task() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::new(dir.path().join("state.redb"));
        let task_dir = dir.path().join("t");
        std::fs::create_dir_all(&task_dir).expect("mkdir");
        let job = JobRecord {
            id: "j".into(),
            state: JobState::Active,
            run_id: "r".into(),
            creation_time: time::OffsetDateTime::now_utc(),
            end_time: None,
            terminate_reason: None,
            task_count: 1,
            owner: None,
        };
        let mut rec = TaskRecord {
            job_id: "j".into(),
            id: "t".into(),
            state: TaskState::Running,
            result: None,
            exit_code: None,
            failure: None,
            start_time: None,
            end_time: None,
            retry_count: 0,
            nodes: vec![],
            task_dir: task_dir.clone(),
        };
        store.put_batch(&[job], &[rec.clone()]).expect("store");
        let out = task_dir.join("stdout.txt");
        std::fs::write(&out, "one\n").expect("write");
        let writer = {
            let store = store.clone();
            let out = out.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(120)).await;
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .open(&out)
                    .expect("open");
                std::io::Write::write_all(&mut f, b"two\n").expect("append");
                tokio::time::sleep(Duration::from_millis(120)).await;
                rec.state = TaskState::Completed;
                store.put_task(&rec).expect("complete");
            })
        };
        let mut seen = Vec::new();
        let n = follow_task_file(
            &store,
            "j",
            "t",
            Path::new("stdout.txt"),
            Duration::from_millis(30),
            |b| seen.extend_from_slice(b),
        )
        .await
        .expect("follow");
        writer.await.expect("writer");
        assert_eq!(String::from_utf8_lossy(&seen), "one\ntwo\n");
        assert_eq!(n, 8);
    }
}
