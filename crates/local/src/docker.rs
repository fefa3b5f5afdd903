//! The thin layer over `bollard`: connecting, labels, networks with a free /24, node
//! containers, execs with streamed output, and label-based removal.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use bollard::auth::DockerCredentials;
use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, EndpointIpamConfig, EndpointSettings, ExecConfig, HostConfig, Ipam,
    IpamConfig, NetworkCreateRequest, NetworkingConfig, ResourcesUlimits, VolumeCreateOptions,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, ListContainersOptionsBuilder,
    ListNetworksOptionsBuilder, ListVolumesOptionsBuilder, RemoveContainerOptionsBuilder,
    RemoveVolumeOptionsBuilder, WaitContainerOptionsBuilder,
};
use bollard::Docker;
use futures::StreamExt;

use crate::error::{LocalError, Result};
use shipyard_runtime::registry_auth::RegistryLogin;

/// Label keys put on every container, network and volume the backend creates.
pub mod labels {
    /// The job id.
    pub const JOB: &str = "shipyard.job";
    /// The task id.
    pub const TASK: &str = "shipyard.task";
    /// The run (one `run_job` call) uuid.
    pub const RUN: &str = "shipyard.run";
    /// The pid of the owning process.
    pub const PID: &str = "shipyard.pid";
    /// The owning process's start time (clock ticks since boot), against pid reuse.
    pub const PID_START: &str = "shipyard.pid_start";
    /// The owning process's pid namespace (`pid:[inode]`): only runs of the same namespace can
    /// be judged dead by pid.
    pub const PID_NS: &str = "shipyard.pidns";
    /// Host identity of the owning process (`<machine-id>/<boot-id>`).
    pub const HOST: &str = "shipyard.host";
    /// The node id (containers only).
    pub const NODE: &str = "shipyard.node";
    /// Always `local`.
    pub const BACKEND: &str = "shipyard.backend";
}

/// A connected Docker engine.
#[derive(Debug, Clone)]
pub(crate) struct Engine {
    pub(crate) docker: Docker,
}

fn unavailable(e: impl std::fmt::Display) -> LocalError {
    LocalError::DockerUnavailable {
        detail: e.to_string(),
    }
}

/// True when the error is a 404 from the engine.
pub(crate) fn is_not_found(e: &BollardError) -> bool {
    matches!(
        e,
        BollardError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

impl Engine {
    /// Connects (`DOCKER_HOST` or the local socket), negotiates the API version and pings.
    pub(crate) async fn connect() -> Result<Self> {
        let docker = Docker::connect_with_local_defaults().map_err(unavailable)?;
        // Streams (execs, waits) run as long as tasks do; per-request timeouts are ours.
        let docker = docker.with_timeout(Duration::from_secs(3600 * 24 * 7));
        let docker = tokio::time::timeout(Duration::from_secs(15), docker.negotiate_version())
            .await
            .map_err(|_| unavailable("no answer within 15s"))?
            .map_err(unavailable)?;
        tokio::time::timeout(Duration::from_secs(15), docker.ping())
            .await
            .map_err(|_| unavailable("no answer within 15s"))?
            .map_err(unavailable)?;
        Ok(Engine { docker })
    }

    /// Whether `image` is present locally.
    pub(crate) async fn image_exists(&self, image: &str) -> Result<bool> {
        match self.docker.inspect_image(image).await {
            Ok(_) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(LocalError::docker(format!("inspecting image `{image}`"), e)),
        }
    }

    /// Pulls `image` with `login`'s credentials; the error is the engine's message (which
    /// never holds the password).
    pub(crate) async fn pull_image(
        &self,
        image: &str,
        login: &RegistryLogin,
    ) -> std::result::Result<(), String> {
        let (name, tag) = split_image(image);
        let opts = CreateImageOptionsBuilder::new()
            .from_image(name)
            .tag(tag)
            .build();
        let credentials = DockerCredentials {
            username: Some(login.username.clone()),
            password: Some(login.password.clone()),
            serveraddress: Some(login.server.clone()),
            ..Default::default()
        };
        let mut progress = self
            .docker
            .create_image(Some(opts), None, Some(credentials));
        while let Some(item) = progress.next().await {
            match item {
                Ok(info) => {
                    if let Some(detail) = info.error_detail.and_then(|d| d.message) {
                        return Err(detail);
                    }
                }
                Err(BollardError::DockerResponseServerError { message, .. }) => {
                    return Err(message)
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(())
    }

    /// Subnets of every existing network.
    async fn used_subnets(&self) -> Result<Vec<(Ipv4Addr, u8)>> {
        let nets = self
            .docker
            .list_networks(None::<bollard::query_parameters::ListNetworksOptions>)
            .await
            .map_err(|e| LocalError::docker("listing networks", e))?;
        Ok(nets
            .iter()
            .filter_map(|n| n.ipam.as_ref()?.config.as_ref())
            .flatten()
            .filter_map(|c| parse_cidr(c.subnet.as_deref()?))
            .collect())
    }

    /// Creates a labelled bridge network on a free /24 and returns its base address.
    pub(crate) async fn create_network(
        &self,
        name: &str,
        labels: &HashMap<String, String>,
    ) -> Result<Ipv4Addr> {
        let used = self.used_subnets().await?;
        let candidates = subnet_candidates(rand::random::<u16>());
        let mut tried = 0;
        for base in candidates {
            if used.iter().any(|&(net, len)| overlaps(base, 24, net, len)) {
                continue;
            }
            tried += 1;
            if tried > 64 {
                break;
            }
            let req = NetworkCreateRequest {
                name: name.to_string(),
                driver: Some("bridge".into()),
                labels: Some(labels.clone()),
                ipam: Some(Ipam {
                    driver: Some("default".into()),
                    config: Some(vec![IpamConfig {
                        subnet: Some(format!("{base}/24")),
                        gateway: Some(nth(base, 1).to_string()),
                        ..Default::default()
                    }]),
                    options: None,
                }),
                ..Default::default()
            };
            match self.docker.create_network(req).await {
                Ok(_) => return Ok(base),
                // Another process took the subnet between our listing and the create.
                Err(BollardError::DockerResponseServerError { message, .. })
                    if message.contains("overlap") =>
                {
                    tracing::debug!(%base, "subnet taken meanwhile; trying the next one");
                    continue;
                }
                Err(e) => return Err(LocalError::docker(format!("creating network `{name}`"), e)),
            }
        }
        Err(LocalError::NoFreeSubnet {
            network: name.to_string(),
            tried,
        })
    }

    /// Creates a labelled volume.
    pub(crate) async fn create_volume(
        &self,
        name: &str,
        labels: &HashMap<String, String>,
    ) -> Result<()> {
        self.docker
            .create_volume(VolumeCreateOptions {
                name: Some(name.to_string()),
                labels: Some(labels.clone()),
                ..Default::default()
            })
            .await
            .map_err(|e| LocalError::docker(format!("creating volume `{name}`"), e))?;
        Ok(())
    }

    /// Creates and starts a node container.
    pub(crate) async fn create_and_start(&self, spec: &ContainerSpec) -> Result<()> {
        let host = host_config(spec);
        let networking_config = networking_config(spec);
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            hostname: Some(spec.hostname.clone()),
            entrypoint: Some(vec!["sleep".into(), "infinity".into()]),
            cmd: Some(vec![]),
            env: Some(spec.env.clone()),
            working_dir: Some(spec.working_dir.clone()),
            labels: Some(spec.labels.clone()),
            user: spec.run.user.clone(),
            host_config: Some(host),
            networking_config,
            ..Default::default()
        };
        let opts = CreateContainerOptionsBuilder::new()
            .name(&spec.name)
            .build();
        self.docker
            .create_container(Some(opts), body)
            .await
            .map_err(|e| LocalError::docker(format!("creating container `{}`", spec.name), e))?;
        self.docker
            .start_container(
                &spec.name,
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await
            .map_err(|e| LocalError::docker(format!("starting container `{}`", spec.name), e))?;
        Ok(())
    }

    /// Runs `argv` in `container`, feeding output chunks to `sink`; returns the exit code.
    pub(crate) async fn exec(
        &self,
        container: &str,
        argv: Vec<String>,
        working_dir: Option<String>,
        sink: &mut (dyn FnMut(OutputStream, &[u8]) + Send),
    ) -> Result<i64> {
        let what = || format!("running a command in `{container}`");
        let created = self
            .docker
            .create_exec(
                container,
                ExecConfig {
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    cmd: Some(argv),
                    working_dir,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| LocalError::docker(what(), e))?;
        match self
            .docker
            .start_exec(&created.id, None)
            .await
            .map_err(|e| LocalError::docker(what(), e))?
        {
            bollard::exec::StartExecResults::Attached { mut output, .. } => {
                while let Some(item) = output.next().await {
                    match item {
                        Ok(bollard::container::LogOutput::StdOut { message })
                        | Ok(bollard::container::LogOutput::Console { message }) => {
                            sink(OutputStream::Stdout, &message)
                        }
                        Ok(bollard::container::LogOutput::StdErr { message }) => {
                            sink(OutputStream::Stderr, &message)
                        }
                        Ok(_) => {}
                        Err(e) => return Err(LocalError::docker(what(), e)),
                    }
                }
            }
            bollard::exec::StartExecResults::Detached => {}
        }
        let inspect = self
            .docker
            .inspect_exec(&created.id)
            .await
            .map_err(|e| LocalError::docker(what(), e))?;
        // No exit code: the process was killed with its container.
        Ok(inspect.exit_code.unwrap_or(137))
    }

    /// Resolves when `container` is no longer running.
    pub(crate) async fn wait_stopped(&self, container: &str) {
        let opts = WaitContainerOptionsBuilder::new()
            .condition("not-running")
            .build();
        let mut s = self.docker.wait_container(container, Some(opts));
        match s.next().await {
            Some(Ok(_)) | Some(Err(BollardError::DockerContainerWaitError { .. })) | None => return,
            Some(Err(e)) => {
                tracing::debug!(container, error = %e, "wait failed; polling instead");
            }
        }
        loop {
            match self
                .docker
                .inspect_container(
                    container,
                    None::<bollard::query_parameters::InspectContainerOptions>,
                )
                .await
            {
                Ok(c) if c.state.as_ref().and_then(|s| s.running) == Some(true) => {}
                _ => return,
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Removes every container, network and volume carrying all of `filter` labels
    /// (`key=value` strings). Errors are logged, not returned: cleanup goes on.
    pub(crate) async fn remove_labelled(&self, filter: &[String]) -> usize {
        let filters: HashMap<&str, Vec<String>> = HashMap::from([("label", filter.to_vec())]);
        let mut removed = 0;
        let containers = self
            .docker
            .list_containers(Some(
                ListContainersOptionsBuilder::new()
                    .all(true)
                    .filters(&filters)
                    .build(),
            ))
            .await
            .unwrap_or_default();
        let names: Vec<String> = containers.iter().filter_map(|c| c.id.clone()).collect();
        removed += self.remove_containers(&names).await;
        let nets = self
            .docker
            .list_networks(Some(
                ListNetworksOptionsBuilder::new().filters(&filters).build(),
            ))
            .await
            .unwrap_or_default();
        for n in nets.iter().filter_map(|n| n.id.as_deref()) {
            if self.remove_network(n).await {
                removed += 1;
            }
        }
        let vols = self
            .docker
            .list_volumes(Some(
                ListVolumesOptionsBuilder::new().filters(&filters).build(),
            ))
            .await
            .ok()
            .and_then(|v| v.volumes)
            .unwrap_or_default();
        for v in vols {
            if self.remove_volume(&v.name).await {
                removed += 1;
            }
        }
        removed
    }

    /// Force-removes containers concurrently; returns how many were removed.
    pub(crate) async fn remove_containers(&self, names: &[String]) -> usize {
        let opts = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(true)
            .build();
        let results = futures::future::join_all(names.iter().map(|n| {
            let opts = opts.clone();
            async move {
                match self.docker.remove_container(n, Some(opts)).await {
                    Ok(()) => true,
                    Err(e) if is_not_found(&e) => false,
                    // "removal already in progress" is someone else doing our job.
                    Err(BollardError::DockerResponseServerError {
                        status_code: 409, ..
                    }) => false,
                    Err(e) => {
                        tracing::warn!(container = %n, error = %e, "could not remove container");
                        false
                    }
                }
            }
        }))
        .await;
        results.into_iter().filter(|r| *r).count()
    }

    /// Removes a network, retrying briefly while endpoints detach.
    pub(crate) async fn remove_network(&self, name: &str) -> bool {
        for attempt in 0..20 {
            match self.docker.remove_network(name).await {
                Ok(()) => return true,
                Err(e) if is_not_found(&e) => return false,
                Err(e) => {
                    if attempt == 19 {
                        tracing::warn!(network = name, error = %e, "could not remove network");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        false
    }

    /// Removes a volume, retrying briefly while containers release it.
    pub(crate) async fn remove_volume(&self, name: &str) -> bool {
        let opts = RemoveVolumeOptionsBuilder::new().force(true).build();
        for attempt in 0..20 {
            match self.docker.remove_volume(name, Some(opts.clone())).await {
                Ok(()) => return true,
                Err(e) if is_not_found(&e) => return false,
                Err(e) => {
                    if attempt == 19 {
                        tracing::warn!(volume = name, error = %e, "could not remove volume");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        false
    }
}

/// Which stream an output chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// Everything needed to create one node container.
#[derive(Debug, Clone)]
pub(crate) struct ContainerSpec {
    pub(crate) name: String,
    pub(crate) hostname: String,
    pub(crate) image: String,
    pub(crate) env: Vec<String>,
    pub(crate) working_dir: String,
    pub(crate) labels: HashMap<String, String>,
    pub(crate) binds: Vec<String>,
    pub(crate) extra_hosts: Vec<String>,
    pub(crate) network: Option<String>,
    pub(crate) ip: Option<Ipv4Addr>,
    pub(crate) run: crate::cmdline::RunOptions,
}

/// `base + n`.
pub(crate) fn nth(base: Ipv4Addr, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(base).wrapping_add(n))
}

fn parse_cidr(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (ip, len) = s.split_once('/')?;
    Some((ip.parse().ok()?, len.parse().ok()?))
}

fn overlaps(a: Ipv4Addr, alen: u8, b: Ipv4Addr, blen: u8) -> bool {
    let len = alen.min(blen).min(32);
    let mask = if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    };
    (u32::from(a) & mask) == (u32::from(b) & mask)
}

/// /24 candidates in 10.213.0.0/16 and 10.214.0.0/16, starting at a random offset so concurrent
/// processes rarely race for the same one.
fn subnet_candidates(start: u16) -> Vec<Ipv4Addr> {
    (0..512u32)
        .map(|i| {
            let k = (u32::from(start) + i) % 512;
            Ipv4Addr::new(10, 213 + (k / 256) as u8, (k % 256) as u8, 0)
        })
        .collect()
}

/// The container's host settings: `--init`, binds, hosts, network, Batch's tmpfs node
/// directories and the task's `containerRunOptions`.
fn host_config(spec: &ContainerSpec) -> HostConfig {
    let mut host = HostConfig {
        init: Some(true),
        binds: Some(spec.binds.clone()),
        extra_hosts: Some(spec.extra_hosts.clone()),
        network_mode: spec.network.clone(),
        privileged: Some(spec.run.privileged),
        shm_size: spec.run.shm_size,
        ipc_mode: spec.run.ipc.clone(),
        tmpfs: Some(HashMap::from([
            (
                format!("{}/shared", crate::env::NODE_ROOT_DIR),
                "rw,exec,mode=1777".to_string(),
            ),
            (
                format!("{}/startup", crate::env::NODE_ROOT_DIR),
                "rw,exec,mode=1777".to_string(),
            ),
        ])),
        ..Default::default()
    };
    if !spec.run.cap_add.is_empty() {
        host.cap_add = Some(spec.run.cap_add.clone());
    }
    if !spec.run.security_opt.is_empty() {
        host.security_opt = Some(spec.run.security_opt.clone());
    }
    if !spec.run.ulimits.is_empty() {
        host.ulimits = Some(
            spec.run
                .ulimits
                .iter()
                .map(|(n, s, h)| ResourcesUlimits {
                    name: Some(n.clone()),
                    soft: Some(*s),
                    hard: Some(*h),
                })
                .collect(),
        );
    }
    host
}

/// The node's fixed address and alias on the task's network (multi-instance tasks).
fn networking_config(spec: &ContainerSpec) -> Option<NetworkingConfig> {
    match (&spec.network, spec.ip) {
        (Some(net), Some(ip)) => Some(NetworkingConfig {
            endpoints_config: Some(HashMap::from([(
                net.clone(),
                EndpointSettings {
                    ipam_config: Some(EndpointIpamConfig {
                        ipv4_address: Some(ip.to_string()),
                        ..Default::default()
                    }),
                    aliases: Some(vec![spec.hostname.clone()]),
                    ..Default::default()
                },
            )])),
        }),
        _ => None,
    }
}

/// `name` and `tag` of an image reference (`latest` without a tag; a digest reference is
/// passed whole with an empty tag).
pub(crate) fn split_image(image: &str) -> (&str, &str) {
    let slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[slash..].rfind(':') {
        Some(i) if !image.contains('@') => (&image[..slash + i], &image[slash + i + 1..]),
        _ => (image, if image.contains('@') { "" } else { "latest" }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references_split_into_name_and_tag() {
        assert_eq!(
            split_image("127.0.0.1:5000/team/mpi:v1"),
            ("127.0.0.1:5000/team/mpi", "v1")
        );
        assert_eq!(
            split_image("localhost:5000/mpi"),
            ("localhost:5000/mpi", "latest")
        );
        assert_eq!(split_image("ubuntu"), ("ubuntu", "latest"));
        assert_eq!(split_image("mpi@sha256:abc"), ("mpi@sha256:abc", ""));
    }

    #[test]
    fn subnet_overlap_maths() {
        let a = Ipv4Addr::new(10, 213, 5, 0);
        assert!(overlaps(a, 24, Ipv4Addr::new(10, 213, 5, 0), 24));
        assert!(overlaps(a, 24, Ipv4Addr::new(10, 0, 0, 0), 8));
        assert!(!overlaps(a, 24, Ipv4Addr::new(10, 213, 6, 0), 24));
        assert!(!overlaps(a, 24, Ipv4Addr::new(172, 17, 0, 0), 16));
        assert_eq!(
            parse_cidr("172.17.0.0/16"),
            Some((Ipv4Addr::new(172, 17, 0, 0), 16))
        );
        assert_eq!(nth(a, 2), Ipv4Addr::new(10, 213, 5, 2));
        let c = subnet_candidates(511);
        assert_eq!(c.len(), 512);
        assert_eq!(c[0], Ipv4Addr::new(10, 214, 255, 0));
        assert_eq!(c[1], Ipv4Addr::new(10, 213, 0, 0));
    }
}
