//! VM-like nodes (`shipyard-vm-node`) for real: namespaces on a bridge, one dockerd per node,
//! images through a pool-local registry and `docker load`, an MPI job over sshd in
//! `--net=host` containers across two nodes, engine death, teardown and sweep leaving nothing.
//!
//! Needs root, iproute2, iptables, util-linux, dockerd, `docker-registry` and the test image.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{ensure, Context};
use shipyard_e2e::{require_test_image, HelloReport, TEST_IMAGE};
use shipyard_vm_node::{sweep, Binaries, NodeHealth, VmNode, VmPool};

/// The tests here are heavy (several dockerds each) and one measures times: run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Demands the programs the VM-like nodes run (on top of [`require_test_image`]).
fn require_vm_node_tools() -> bool {
    if !require_test_image() {
        return false;
    }
    let missing: Vec<&str> = [
        "ip",
        "nsenter",
        "unshare",
        "iptables",
        "dockerd",
        "docker-registry",
    ]
    .into_iter()
    .filter(|p| {
        !Command::new("sh")
            .args(["-c", &format!("command -v {p}")])
            .output()
            .is_ok_and(|o| o.status.success())
    })
    .collect();
    let root = std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
    });
    if missing.is_empty() && root {
        return true;
    }
    let what = format!("root and the programs {missing:?} (for VM-like nodes)");
    if !shipyard_e2e::in_ci() && std::env::var("SHIPYARD_TEST_ALLOW_SKIP").is_ok_and(|v| v == "1") {
        eprintln!("SKIPPED: {what} are missing (run `bash scripts/setup.sh`)");
        return false;
    }
    panic!("{what} are missing: run `bash scripts/setup.sh` (set SHIPYARD_TEST_ALLOW_SKIP=1 outside CI to skip)");
}

fn sh(cmd: &str) -> String {
    Command::new("sh")
        .args(["-c", cmd])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Asserts that nothing of pool `id` (state dir `dir`) is left on the machine.
fn assert_nothing_left(id: &str, dir: &Path) {
    let netns = sh("ip netns list");
    assert!(!netns.contains(id), "network namespaces left: {netns}");
    let links = sh("ip -o link show");
    assert!(
        !links.contains(&format!("syb{id}")) && !links.contains(&format!("syv{id}")),
        "links left: {links}"
    );
    let fw = sh("iptables -S FORWARD");
    assert!(!fw.contains(id), "FORWARD rule left: {fw}");
    let ps = sh("ps -eo args");
    assert!(!ps.lines().any(|l| l.contains(id)), "processes left: {ps}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    assert!(!mounts.contains(id), "mounts left: {mounts}");
    assert!(!dir.exists(), "state dir left: {}", dir.display());
    assert!(
        !Path::new(&format!("/run/shipyard-vm/{id}")).exists(),
        "exec root left"
    );
}

async fn run_on(node: &VmNode, script: &str) -> anyhow::Result<String> {
    let out = node.command("sh").args(["-c", script]).output().await?;
    ensure!(
        out.code == Some(0),
        "{} on {}: exit {:?}: {}",
        script,
        node.name(),
        out.code,
        out.stderr_text()
    );
    Ok(out.stdout_text())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_have_own_identity_engine_and_network() -> anyhow::Result<()> {
    if !require_vm_node_tools() {
        return Ok(());
    }
    let _serial = SERIAL.lock().await;
    let state = tempfile::tempdir()?;
    let t = Instant::now();
    let pool = VmPool::builder()
        .nodes(3)
        .state_dir(state.path())
        .registry(true)
        .create()?;
    eprintln!(
        "vm_nodes: 3 nodes + registry created in {:.2}s",
        t.elapsed().as_secs_f64()
    );
    let (id, dir) = (pool.id().to_string(), pool.dir().to_path_buf());
    let nodes = pool.nodes();
    assert_eq!(nodes.len(), 3);

    // identity: hostname, address on eth0, /etc/hosts naming every node, common node root
    let mut seen = Vec::new();
    for node in nodes {
        std::fs::write(
            node.root_on_host().join("whoami"),
            format!("{}\n", node.name()),
        )?;
        let out = node
            .command("sh")
            .args(["-c", "hostname; ip -4 -o addr show dev eth0 | awk '{print $4}'; cat \"$AZ_BATCH_NODE_ROOT_DIR/whoami\"; getent hosts node-0 node-1 node-2 | wc -l; echo $DOCKER_HOST"])
            .env("AZ_BATCH_NODE_ROOT_DIR", node.root_dir())
            .output()
            .await?;
        assert_eq!(out.code, Some(0), "{}", out.stderr_text());
        let lines: Vec<String> = out.stdout_text().lines().map(str::to_string).collect();
        assert_eq!(lines[0], node.name());
        assert_eq!(lines[1], format!("{}/24", node.address()));
        assert_eq!(
            lines[2],
            node.name(),
            "the common root path shows this node's root"
        );
        assert_eq!(lines[3], "3", "every node is named in /etc/hosts");
        assert_eq!(lines[4], node.docker_host());
        assert_eq!(node.health(), NodeHealth::Ready);
        seen.push((lines[0].clone(), lines[1].clone()));
    }
    seen.sort();
    seen.dedup();
    assert_eq!(
        seen.len(),
        3,
        "hostnames and addresses are distinct: {seen:?}"
    );

    // images: a real pull from the pool's registry, then `docker run --net=host` sees the node
    let times = pool.distribute_via_registry(TEST_IMAGE)?;
    eprintln!(
        "vm_nodes: registry distribution to 3 nodes: push {:.2}s, pulls {:.2}s",
        times.export.as_secs_f64(),
        times.import.as_secs_f64()
    );
    let host_tags = sh("docker images --format '{{.Repository}}'");
    assert!(
        !host_tags.contains(
            &pool
                .registry()
                .map(|r| r.push_address().to_string())
                .unwrap_or_default()
        ),
        "push tag left on the host"
    );
    for node in nodes {
        let out = run_on(node, &format!("docker run --rm --net=host {TEST_IMAGE} sh -c 'hostname; ip -4 -o addr show dev eth0'")).await?;
        assert!(out.starts_with(node.name()), "{out}");
        assert!(
            out.contains(&format!("inet {}/24", node.address())),
            "{out}"
        );
    }

    // a killed process is reported as killed
    let mut p = nodes[0].command("sleep").arg("30").spawn()?;
    let killer = p.killer();
    let t = Instant::now();
    let (out, kill) = tokio::join!(p.wait(), async {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        killer.kill().await
    });
    kill?;
    assert_eq!(out?.code, None, "killed by a signal");
    assert!(t.elapsed().as_secs() < 10);

    // a dead engine makes the node unusable
    let pid = nodes[2].engine_pid().context("no dockerd pid")?;
    ensure!(Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()?
        .success());
    let mut health = nodes[2].health();
    for _ in 0..100 {
        if health != NodeHealth::Ready {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        health = nodes[2].health();
    }
    assert!(matches!(health, NodeHealth::Unusable { .. }), "{health:?}");
    assert!(nodes[2].ensure_ready().is_err());
    assert_eq!(nodes[1].health(), NodeHealth::Ready);

    pool.delete();
    assert_nothing_left(&id, &dir);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mpi_job_across_two_nodes_over_sshd() -> anyhow::Result<()> {
    if !require_vm_node_tools() {
        return Ok(());
    }
    let _serial = SERIAL.lock().await;
    let state = tempfile::tempdir()?;
    let pool = VmPool::builder()
        .nodes(2)
        .state_dir(state.path())
        .create()?;
    let (id, dir) = (pool.id().to_string(), pool.dir().to_path_buf());
    let t = Instant::now();
    let times = pool.load_image(TEST_IMAGE)?;
    eprintln!(
        "vm_nodes: docker save {:.2}s + parallel load into 2 nodes {:.2}s (total {:.2}s)",
        times.export.as_secs_f64(),
        times.import.as_secs_f64(),
        t.elapsed().as_secs_f64()
    );
    let keys = tempfile::tempdir()?;
    let key = keys.path().join("id");
    ensure!(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", ""])
        .arg("-f")
        .arg(&key)
        .status()?
        .success());
    let root = pool.nodes()[0].root_dir().display().to_string();
    for node in pool.nodes() {
        let ssh = node.root_on_host().join("shared/ssh");
        std::fs::create_dir_all(&ssh)?;
        std::fs::copy(&key, ssh.join("id"))?;
        std::fs::copy(keys.path().join("id.pub"), ssh.join("authorized_keys"))?;
        let start = format!(
            "docker run -d --name sshd --net=host -v {root}:{root} {TEST_IMAGE} sh -c \
             'mkdir -p /run/sshd && ssh-keygen -q -A && exec /usr/sbin/sshd -D -e -p 23 -o AuthorizedKeysFile={root}/shared/ssh/authorized_keys -o StrictModes=no'"
        );
        run_on(node, &start).await?;
    }
    // node-0 reaches node-1's sshd by name across the bridge
    run_on(&pool.nodes()[0], "for i in $(seq 50); do bash -c \"exec 3<>/dev/tcp/node-1/23\" 2>/dev/null && exit 0; sleep 0.1; done; exit 1").await?;
    let ssh_args = format!("-p 23 -i {root}/shared/ssh/id -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=error");
    let mpirun = format!(
        "docker exec sshd mpirun.openmpi --allow-run-as-root -H node-0:1,node-1:1 -np 2 \
         --mca plm_rsh_args '{ssh_args}' --mca btl tcp,self --mca btl_tcp_if_include eth0 \
         --mca oob_tcp_if_include eth0 /opt/shipyard/bin/mpi-hello-openmpi"
    );
    let t = Instant::now();
    let out = run_on(&pool.nodes()[0], &mpirun).await?;
    eprintln!(
        "vm_nodes: mpirun 2 ranks on 2 nodes {:.2}s",
        t.elapsed().as_secs_f64()
    );
    let report = HelloReport::parse(&out);
    report.assert_complete(2);
    assert_eq!(
        report.hosts(),
        vec!["node-0".to_string(), "node-1".to_string()],
        "{out}"
    );
    pool.delete();
    assert_nothing_left(&id, &dir);
    Ok(())
}

#[test]
fn creation_times_and_sweep_of_a_dead_owner() -> anyhow::Result<()> {
    if !require_vm_node_tools() {
        return Ok(());
    }
    let _serial = SERIAL.blocking_lock();
    let state = tempfile::tempdir()?;
    for n in [2, 8] {
        let t = Instant::now();
        let pool = VmPool::builder()
            .nodes(n)
            .state_dir(state.path())
            .create()?;
        let created = t.elapsed();
        assert!(pool
            .nodes()
            .iter()
            .all(|node| node.health() == NodeHealth::Ready));
        let (id, dir) = (pool.id().to_string(), pool.dir().to_path_buf());
        let t = Instant::now();
        pool.delete();
        eprintln!(
            "vm_nodes: {n} nodes created in {:.2}s, deleted in {:.2}s",
            created.as_secs_f64(),
            t.elapsed().as_secs_f64()
        );
        assert_nothing_left(&id, &dir);
    }

    // a pool whose owner died is swept; a live owner's pool is kept
    let live = VmPool::builder()
        .nodes(1)
        .state_dir(state.path())
        .create()?;
    let orphan = VmPool::builder()
        .nodes(2)
        .state_dir(state.path())
        .create()?;
    let (id, dir) = (orphan.id().to_string(), orphan.dir().to_path_buf());
    std::mem::forget(orphan);
    let mut dead = Command::new("true").spawn()?;
    let dead_pid = dead.id();
    dead.wait()?;
    let record = dir.join("pool.json");
    let mut json: serde_json::Value = serde_json::from_slice(&std::fs::read(&record)?)?;
    json["owner"]["pid"] = dead_pid.into();
    std::fs::write(&record, serde_json::to_vec(&json)?)?;
    let report = sweep(state.path(), &Binaries::default())?;
    assert_eq!(report.removed, vec![id.clone()]);
    assert_eq!(report.kept, vec![live.id().to_string()]);
    assert_nothing_left(&id, &dir);
    assert_eq!(live.nodes()[0].health(), NodeHealth::Ready);
    Ok(())
}

#[test]
fn a_dockerd_that_dies_at_startup_fails_creation_naming_the_node_and_leaves_nothing(
) -> anyhow::Result<()> {
    if !require_vm_node_tools() {
        return Ok(());
    }
    let _serial = SERIAL.blocking_lock();
    let state = tempfile::tempdir()?;
    let err = VmPool::builder()
        .nodes(2)
        .state_dir(state.path())
        .binaries(Binaries::default().dockerd("/bin/false"))
        .create()
        .err()
        .context("a pool whose dockerd is /bin/false was created")?;
    let text = err.to_string();
    assert!(
        matches!(err, shipyard_vm_node::VmNodeError::EngineDead { .. }),
        "{text}"
    );
    assert!(text.contains("node-0 of pool "), "{text}");
    let pools: Vec<_> = std::fs::read_dir(state.path().join("pools"))?.collect();
    assert!(pools.is_empty(), "state left: {pools:?}");
    let id = text
        .split("of pool ")
        .nth(1)
        .and_then(|s| s.split(':').next())
        .unwrap_or_default();
    assert_eq!(id.len(), 8, "{text}");
    assert_nothing_left(id, &state.path().join("pools").join(id));

    let err = VmPool::builder()
        .nodes(1)
        .state_dir(state.path())
        .binaries(Binaries::default().ip("/nonexistent/ip"))
        .create()
        .err()
        .context("created without ip")?;
    assert!(
        matches!(err, shipyard_vm_node::VmNodeError::Spawn { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("/nonexistent/ip"), "{err}");
    Ok(())
}

/// The host's image ID of [`TEST_IMAGE`].
fn host_image_id() -> anyhow::Result<String> {
    let out = Command::new("docker")
        .args(["image", "inspect", "-f", "{{.Id}}", TEST_IMAGE])
        .output()?;
    ensure!(out.status.success(), "docker image inspect {TEST_IMAGE}");
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The pool ids using each image cache entry under `state`.
fn cache_users(state: &Path) -> Vec<Vec<String>> {
    let mut v: Vec<Vec<String>> = std::fs::read_dir(state.join("cache"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            let mut u: Vec<String> = std::fs::read_dir(e.path().join("users"))
                .into_iter()
                .flatten()
                .flatten()
                .map(|u| u.file_name().to_string_lossy().into_owned())
                .collect();
            u.sort();
            u
        })
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_made_from_the_image_cache_is_ready_fast_and_its_pull_is_real() -> anyhow::Result<()>
{
    if !require_vm_node_tools() {
        return Ok(());
    }
    let _serial = SERIAL.lock().await;
    let state = tempfile::tempdir()?;
    let host_id = host_image_id()?;
    let make = || {
        VmPool::builder()
            .nodes(3)
            .state_dir(state.path())
            .registry(true)
            .registry_mirror(true)
            .images([TEST_IMAGE])
            .create()
    };
    let first = tokio::task::block_in_place(make)?;
    let t1 = first.creation_times();
    eprintln!("vm_nodes: 3 nodes, image cache miss: {t1:?}");
    assert_eq!(t1.cache_hit, Some(false), "a new state dir has no cache");
    let second = tokio::task::block_in_place(make)?;
    let t2 = second.creation_times();
    eprintln!("vm_nodes: 3 nodes, image cache hit: {t2:?}");
    assert_eq!(t2.cache_hit, Some(true));
    assert_eq!(t2.push, std::time::Duration::ZERO, "a hit pushes nothing");
    assert!(
        t2.total.as_secs_f64() < 10.0,
        "a pool from the cache took {:.2}s",
        t2.total.as_secs_f64()
    );
    assert_eq!(
        cache_users(state.path()),
        vec![{
            let mut ids = vec![first.id().to_string(), second.id().to_string()];
            ids.sort();
            ids
        }],
        "one cache entry, used by both pools"
    );

    let reg = second.registry().context("registry")?.pull_address();
    for node in second.nodes() {
        // The node's engine holds the host's image, under its own name, from the start.
        let id = run_on(
            node,
            &format!("docker image inspect -f '{{{{.Id}}}}' {TEST_IMAGE}"),
        )
        .await?;
        assert_eq!(id.trim(), host_id, "{}", node.name());
        // Its layers are the cache's, read-only, mounted in the node's namespace only.
        let ro = run_on(
            node,
            "grep -c '/overlay2/[0-9a-f]*/diff ro,' /proc/self/mountinfo",
        )
        .await?;
        assert!(ro.trim().parse::<u32>().unwrap_or(0) >= 1, "{ro}");
        // The job preparation's pull goes to the registry (the nodes' mirror) and is current.
        let t = Instant::now();
        let out = run_on(node, &format!("docker pull {TEST_IMAGE}")).await?;
        assert!(out.contains("Image is up to date"), "{out}");
        // By the registry's own address: the manifest is fetched, no layer is transferred.
        let out = run_on(node, &format!("docker pull {reg}/{TEST_IMAGE}")).await?;
        assert!(
            out.contains("Digest: sha256:") && out.contains(&format!("for {reg}/{TEST_IMAGE}")),
            "{out}"
        );
        for transfer in [
            "Downloading",
            "Download complete",
            "Extracting",
            "Pull complete",
        ] {
            assert!(!out.contains(transfer), "{out}");
        }
        eprintln!(
            "vm_nodes: {} pulls from the cached registry {:.2}s",
            node.name(),
            t.elapsed().as_secs_f64()
        );
    }

    // Shared layers are never written through: a container's change stays its own, and
    // removing the image on one node leaves it on the others.
    let [a, b, ..] = second.nodes() else {
        anyhow::bail!("3 nodes")
    };
    let original = run_on(
        b,
        &format!("docker run --rm {TEST_IMAGE} cat /etc/debian_version"),
    )
    .await?;
    run_on(
        a,
        &format!("docker run --name writer {TEST_IMAGE} sh -c 'echo changed > /etc/debian_version' && docker rm writer && docker rmi {reg}/{TEST_IMAGE} {TEST_IMAGE}"),
    )
    .await?;
    let after = run_on(
        b,
        &format!("docker run --rm {TEST_IMAGE} cat /etc/debian_version"),
    )
    .await?;
    assert_eq!(
        after, original,
        "a container on another node changed a shared layer"
    );
    assert_ne!(original.trim(), "changed");

    // Deleting a pool leaves the cache to the other; the other keeps working.
    let (id1, dir1) = (first.id().to_string(), first.dir().to_path_buf());
    let t = Instant::now();
    first.delete();
    eprintln!(
        "vm_nodes: cached pool deleted in {:.2}s",
        t.elapsed().as_secs_f64()
    );
    assert_nothing_left(&id1, &dir1);
    assert_eq!(
        cache_users(state.path()),
        vec![vec![second.id().to_string()]]
    );
    let out = run_on(
        b,
        &format!("docker run --rm {TEST_IMAGE} cat /etc/debian_version"),
    )
    .await?;
    assert_eq!(out, original);
    let (id2, dir2) = (second.id().to_string(), second.dir().to_path_buf());
    second.delete();
    assert_nothing_left(&id2, &dir2);
    assert_eq!(
        cache_users(state.path()),
        vec![Vec::<String>::new()],
        "the entry stays, unused"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_added_to_a_live_pool_join_it_and_a_removed_node_leaves_nothing() -> anyhow::Result<()>
{
    if !require_vm_node_tools() {
        return Ok(());
    }
    let _serial = SERIAL.lock().await;
    let state = tempfile::tempdir()?;
    let mut pool = VmPool::builder()
        .nodes(1)
        .state_dir(state.path())
        .registry(true)
        .create()?;
    let (id, dir) = (pool.id().to_string(), pool.dir().to_path_buf());
    let t = Instant::now();
    let added = pool.add_nodes(2)?;
    let add_secs = t.elapsed().as_secs_f64();
    let names: Vec<&str> = added.iter().map(VmNode::name).collect();
    assert_eq!(names, ["node-1", "node-2"]);
    assert_eq!(pool.nodes().len(), 3);
    let reg = pool
        .registry()
        .map(|r| r.pull_address().to_string())
        .unwrap_or_default();
    // Every node (the first one too) names every node; each new engine answers and trusts the
    // pool registry; the first node reaches the new ones on the bridge (a refused connection
    // is the other node's kernel answering).
    for node in pool.nodes() {
        let out = run_on(
            node,
            "hostname; getent hosts node-0 node-1 node-2 | wc -l; docker info -f '{{.RegistryConfig.IndexConfigs}}'",
        )
        .await?;
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.first().copied(), Some(node.name()), "{out}");
        assert_eq!(lines.get(1).copied(), Some("3"), "{out}");
        assert!(
            out.contains(&reg),
            "{} trusts the registry {reg}: {out}",
            node.name()
        );
        assert_eq!(node.health(), NodeHealth::Ready);
    }
    for new in &added {
        let probe = format!(
            "timeout 5 bash -c 'exec 3<>/dev/tcp/{}/9' 2>&1 | grep -q refused",
            new.address()
        );
        run_on(&pool.nodes()[0], &probe).await?;
    }

    // Removing node-1: its dockerd, namespace, veth and directories go; the others stop
    // naming it and keep working.
    let gone = added[0].clone();
    let pid = gone.engine_pid().context("node-1's dockerd")?;
    let t = Instant::now();
    pool.remove_node("node-1")?;
    let remove_secs = t.elapsed().as_secs_f64();
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "dockerd {pid} left"
    );
    let netns = sh("ip netns list");
    assert!(!netns.contains(gone.netns()), "{netns}");
    assert!(
        !sh("ip -o link show").contains(&format!("syv{id}n1")),
        "veth left"
    );
    assert!(!gone.root_on_host().exists(), "node directory left");
    let names: Vec<&str> = pool.nodes().iter().map(VmNode::name).collect();
    assert_eq!(names, ["node-0", "node-2"]);
    for node in pool.nodes() {
        let out = run_on(node, "getent hosts node-1 || echo none; docker info -f ok").await?;
        assert_eq!(out, "none\nok\n", "on {}", node.name());
    }
    // The freed number is taken again.
    let again = pool.add_nodes(1)?;
    assert_eq!(again[0].name(), "node-1");
    assert_eq!(run_on(&again[0], "docker info -f ok").await?, "ok\n");
    eprintln!("vm_nodes: 2 nodes added in {add_secs:.2}s, one removed in {remove_secs:.2}s");
    pool.delete();
    assert_nothing_left(&id, &dir);
    Ok(())
}
