//! Getting images into the node engines.

use std::time::{Duration, Instant};

use crate::cmd::{run, run_cmd};
use crate::error::{Result, VmNodeError};
use crate::pool::VmPool;

/// How long each phase of an image distribution took.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DistributionTimes {
    /// `docker save` on the host, or `docker push` to the registry.
    pub export: Duration,
    /// `docker load` or `docker pull` on every node (in parallel).
    pub import: Duration,
}

impl VmPool {
    /// Copies `image` from the host's engine into every node's engine: one `docker save` to a
    /// file in the pool's directory, then `docker load` into all nodes in parallel.
    pub fn load_image(&self, image: &str) -> Result<DistributionTimes> {
        let bins = self.binaries();
        let scope = format!("pool {}", self.id());
        let tar = self.dir().join("image.tar");
        let t0 = Instant::now();
        run(
            &scope,
            &bins.docker,
            [
                "save".as_ref(),
                "-o".as_ref(),
                tar.as_os_str(),
                image.as_ref(),
            ],
        )?;
        let export = t0.elapsed();
        let t1 = Instant::now();
        let result = self.on_every_node(|node| {
            let scope = format!("{} of {scope}", node.name());
            let mut cmd = std::process::Command::new(&bins.docker);
            cmd.arg("-H")
                .arg(node.docker_host())
                .arg("load")
                .arg("-q")
                .arg("-i")
                .arg(&tar);
            run_cmd(&scope, &mut cmd).map(|_| ())
        });
        let _ = std::fs::remove_file(&tar);
        result?;
        Ok(DistributionTimes {
            export,
            import: t1.elapsed(),
        })
    }

    /// Pushes `image` from the host's engine to the pool's registry, then every node pulls it
    /// (a real `docker pull` over the bridge) and tags it with its original name, so node
    /// tasks use `image` unchanged. The host keeps no extra tag.
    pub fn distribute_via_registry(&self, image: &str) -> Result<DistributionTimes> {
        let bins = self.binaries();
        let scope = format!("pool {}", self.id());
        let Some(reg) = self.registry() else {
            return Err(VmNodeError::InvalidConfig {
                field: "registry",
                reason: format!("{scope} was built without a registry"),
            });
        };
        let pushed = format!("{}/{image}", reg.push_address());
        let pulled = format!("{}/{image}", reg.pull_address());
        let t0 = Instant::now();
        run(&scope, &bins.docker, ["tag", image, &pushed])?;
        let push = run(&scope, &bins.docker, ["push", "-q", &pushed]);
        let untag = run(&scope, &bins.docker, ["rmi", &pushed]);
        push?;
        untag?;
        let export = t0.elapsed();
        let t1 = Instant::now();
        self.on_every_node(|node| {
            let scope = format!("{} of {scope}", node.name());
            let host = node.docker_host();
            run(&scope, &bins.docker, ["-H", &host, "pull", "-q", &pulled])?;
            run(&scope, &bins.docker, ["-H", &host, "tag", &pulled, image]).map(|_| ())
        })?;
        Ok(DistributionTimes {
            export,
            import: t1.elapsed(),
        })
    }

    /// Runs `f` for every node on its own thread; the first error wins.
    fn on_every_node<F>(&self, f: F) -> Result<()>
    where
        F: Fn(&crate::VmNode) -> Result<()> + Sync,
    {
        std::thread::scope(|s| {
            let handles: Vec<_> = self.nodes().iter().map(|n| s.spawn(|| f(n))).collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(VmNodeError::InvalidConfig {
                            field: "nodes",
                            reason: "a distribution thread panicked".into(),
                        })
                    })
                })
                .collect::<Result<Vec<()>>>()
                .map(|_| ())
        })
    }
}
