//! Private container registries (`credentials.docker_registry`, `additional_registries`):
//! native pools get Batch `containerConfiguration.containerRegistries` and each task's
//! `containerSettings.registry`; non-native pools log in in the job preparation task, with the
//! password passed in a preparation-task environment setting (never argv, never logged),
//! unset right after `docker login --password-stdin`, and `docker logout` after the pulls.
//!
//! Pure: [`attach_registries`] edits a finished [`JobPlan`]; the CLI supplies the logins.

use std::fmt;

use crate::batch::{ContainerRegistry, EnvironmentSetting};
use crate::error::{Field, RuntimeError};
use crate::plan::JobPlan;
use crate::shell::{bash_c, quote};

/// The environment setting of the job preparation task holding login `i`'s password.
pub const PASSWORD_ENV_PREFIX: &str = "SHIPYARD_REGISTRY_PASSWORD_";

/// Docker Hub's server name, for images without a registry host.
pub const DOCKER_HUB: &str = "docker.io";

/// One registry login. `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryLogin {
    /// The registry server (`myregistry.azurecr.io`, `localhost:5000`, `docker.io`).
    pub server: String,
    /// The user name.
    pub username: String,
    /// The password or token.
    pub password: String,
}

impl fmt::Debug for RegistryLogin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryLogin")
            .field("server", &self.server)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// The registry an image reference pulls from: its first path component when that looks
/// like a host (has `.` or `:`, or is `localhost`), else Docker Hub.
pub fn registry_of(image: &str) -> &str {
    match image.split_once('/') {
        Some((host, _)) if host.contains(['.', ':']) || host == "localhost" => host,
        _ => DOCKER_HUB,
    }
}

fn same_server(a: &str, b: &str) -> bool {
    let norm = |s: &str| {
        let s = s
            .strip_prefix("https://")
            .or_else(|| s.strip_prefix("http://"))
            .unwrap_or(s);
        let s = s.split('/').next().unwrap_or_default();
        match s {
            "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => DOCKER_HUB,
            other => other,
        }
        .to_ascii_lowercase()
    };
    norm(a) == norm(b)
}

/// The login for `image`, if any.
pub fn login_for<'a>(logins: &'a [RegistryLogin], image: &str) -> Option<&'a RegistryLogin> {
    let server = registry_of(image);
    logins.iter().find(|l| same_server(&l.server, server))
}

/// The shell lines logging in to every registry (password from `PASSWORD_ENV_PREFIX<i>`,
/// unset right after) and logging out again, for `docker`.
pub fn login_logout_script(logins: &[RegistryLogin], docker: &str) -> (String, String) {
    let d = quote(docker);
    let mut login = Vec::new();
    let mut logout = Vec::new();
    for (i, l) in logins.iter().enumerate() {
        let var = format!("{PASSWORD_ENV_PREFIX}{i}");
        let (s, u) = (quote(&l.server), quote(&l.username));
        let what = format!("{} as user {}", l.server, l.username)
            .replace(['\'', '"', '\\', '$', '`'], "_");
        login.push(format!(
            "printf '%s' \"${var}\" | {d} login --username {u} --password-stdin {s} >/dev/null \
             || {{ unset {var}; echo \"shipyard: docker login to {what} failed\" >&2; exit 1; }}; \
             unset {var}"
        ));
        logout.push(format!("{d} logout {s} >/dev/null 2>&1 || true"));
    }
    (login.join("; "), logout.join("; "))
}

/// Adds `logins` to `plan`. Native pools (`native`): the pool's `containerRegistries` and each
/// container task's `containerSettings.registry` (the login of its image's registry).
/// Non-native pools: the job preparation task logs in before its pulls and logs out after
/// them (its exit status kept), the passwords in its environment settings. `docker` is the
/// runtime's binary. Errors name `credentials.docker_registry` when a login lacks a server or
/// user.
pub fn attach_registries(
    plan: &mut JobPlan,
    native: bool,
    logins: &[RegistryLogin],
    docker: &str,
) -> Result<(), RuntimeError> {
    for l in logins {
        if l.server.trim().is_empty() || l.username.trim().is_empty() {
            return Err(RuntimeError::invalid(
                Field::credentials()
                    .key("docker_registry")
                    .key(l.server.clone()),
                "a registry login needs a server and a username",
            ));
        }
    }
    if logins.is_empty() {
        return Ok(());
    }
    let registries: Vec<ContainerRegistry> = logins
        .iter()
        .map(|l| ContainerRegistry {
            username: Some(l.username.clone()),
            password: Some(l.password.clone()),
            registry_server: Some(l.server.clone()),
            ..Default::default()
        })
        .collect();
    if native {
        if let Some(cc) = plan.pool.container_configuration.as_mut() {
            cc.container_registries = Some(registries);
        }
        for t in &mut plan.tasks {
            if let Some(cs) = t.container_settings.as_mut() {
                if let Some(l) = login_for(logins, &cs.image_name) {
                    cs.registry = Some(ContainerRegistry {
                        username: Some(l.username.clone()),
                        password: Some(l.password.clone()),
                        registry_server: Some(l.server.clone()),
                        ..Default::default()
                    });
                }
            }
        }
        return Ok(());
    }
    let Some(prep) = plan.job.job_preparation_task.as_mut() else {
        return Ok(());
    };
    let (login, logout) = login_logout_script(logins, docker);
    prep.command_line = bash_c(&format!(
        "{login}; {inner}; shipyard_status=$?; {logout}; exit $shipyard_status",
        inner = prep.command_line
    ));
    let env = prep.environment_settings.get_or_insert_with(Vec::new);
    env.retain(|e| !e.name.starts_with(PASSWORD_ENV_PREFIX));
    for (i, l) in logins.iter().enumerate() {
        env.push(EnvironmentSetting::new(
            format!("{PASSWORD_ENV_PREFIX}{i}"),
            l.password.clone(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{
        ContainerConfiguration, JobPreparationTask, TaskAddParameter, TaskContainerSettings,
    };
    use crate::plan::{JobNeeds, PoolNeeds};

    fn logins() -> Vec<RegistryLogin> {
        vec![RegistryLogin {
            server: "myregistry.azurecr.io".into(),
            username: "bob".into(),
            password: "s3cret-not-real".into(),
        }]
    }

    fn plan(native: bool) -> JobPlan {
        JobPlan {
            runtime: "docker".into(),
            pool: PoolNeeds {
                container_configuration: native.then(ContainerConfiguration::default),
                ..Default::default()
            },
            job: JobNeeds {
                job_preparation_task: Some(JobPreparationTask {
                    command_line: "/bin/bash -c 'docker pull myregistry.azurecr.io/app:1'".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            tasks: vec![TaskAddParameter {
                id: "t".into(),
                container_settings: Some(TaskContainerSettings {
                    image_name: "myregistry.azurecr.io/app:1".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }],
        }
    }

    #[test]
    fn image_registries() {
        assert_eq!(
            registry_of("myregistry.azurecr.io/app:1"),
            "myregistry.azurecr.io"
        );
        assert_eq!(registry_of("localhost:5000/x"), "localhost:5000");
        assert_eq!(registry_of("vincentlabo/mpibench:openmpi"), DOCKER_HUB);
        assert_eq!(registry_of("alpine"), DOCKER_HUB);
        assert!(same_server("https://index.docker.io/v1/", "docker.io"));
        assert!(format!("{:?}", logins()[0]).contains("<redacted>"));
        assert!(!format!("{:?}", logins()[0]).contains("s3cret"));
    }

    #[test]
    fn native_pools_get_container_registries() {
        let mut p = plan(true);
        attach_registries(&mut p, true, &logins(), "docker").unwrap();
        let cc = p.pool.container_configuration.unwrap();
        assert_eq!(
            cc.container_registries.unwrap()[0].username.as_deref(),
            Some("bob")
        );
        let reg = p.tasks[0]
            .container_settings
            .clone()
            .unwrap()
            .registry
            .unwrap();
        assert_eq!(
            reg.registry_server.as_deref(),
            Some("myregistry.azurecr.io")
        );
    }

    #[test]
    fn non_native_pools_log_in_with_the_password_in_the_environment_only() {
        let mut p = plan(false);
        attach_registries(&mut p, false, &logins(), "docker").unwrap();
        let prep = p.job.job_preparation_task.unwrap();
        assert!(
            !prep.command_line.contains("s3cret"),
            "{}",
            prep.command_line
        );
        let words = crate::shell::split(&prep.command_line).unwrap();
        let script = &words[2];
        let (login, pull, logout) = (
            script.find("--password-stdin").unwrap(),
            script.find("docker pull").unwrap(),
            script.find("docker logout").unwrap(),
        );
        assert!(login < pull && pull < logout, "{script}");
        assert!(
            script.contains("unset SHIPYARD_REGISTRY_PASSWORD_0"),
            "{script}"
        );
        assert!(script.contains("docker login to myregistry.azurecr.io as user bob failed"));
        let env = prep.environment_settings.unwrap();
        assert_eq!(env[0].name, "SHIPYARD_REGISTRY_PASSWORD_0");
        assert_eq!(env[0].value.as_deref(), Some("s3cret-not-real"));
        let mut p2 = plan(false);
        attach_registries(&mut p2, false, &logins(), "docker").unwrap();
        assert!(!format!("{:?}", p2.job).contains("s3cret"));
        let e = attach_registries(
            &mut plan(false),
            false,
            &[RegistryLogin {
                server: "r.io".into(),
                username: " ".into(),
                password: "x".into(),
            }],
            "docker",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("credentials.docker_registry.r.io"), "{e}");
    }
}
