//! What an Azure VM size implies, as Batch Shipyard decided it (`convoy/settings.py`): RDMA
//! (InfiniBand) over NetworkDirect or SR-IOV, GPUs on the N-series, and the fabric settings each
//! MPI needs on InfiniBand. Every default here is only applied where the user set nothing
//! (Batch Shipyard issue #339: its fabric variables overwrote the user's).

use crate::domain::MpiRuntime;

/// How a VM size reaches InfiniBand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rdma {
    /// The older NetworkDirect driver (A8/A9, H16r/H16mr, NC24r, NC24rs_v2, ND24rs): Intel MPI
    /// over DAPL.
    NetworkDirect,
    /// SR-IOV Mellanox VFs (HB, HC, HX, NC24rs_v3, ND40rs_v2, ND A100/H100): UCX / libfabric mlx.
    SrIov,
}

/// The facts of one VM size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VmSizeFacts {
    /// InfiniBand, and how.
    pub rdma: Option<Rdma>,
    /// GPUs (N-series: NC, ND, NV).
    pub gpu: bool,
}

/// The parts of a size name: `Standard_HB120-16rs_v3` → family `hb`, features `rs`,
/// version 3.
struct Parsed {
    family: String,
    cores: String,
    features: String,
    version: u32,
}

fn parse(vm_size: &str) -> Parsed {
    let lower = vm_size.trim().to_ascii_lowercase();
    let name = lower
        .strip_prefix("standard_")
        .or_else(|| lower.strip_prefix("basic_"))
        .unwrap_or(&lower);
    let mut head = name.split('_');
    let first = head.next().unwrap_or_default();
    let family: String = first
        .chars()
        .take_while(char::is_ascii_alphabetic)
        .collect();
    let rest = &first[family.len()..];
    let cores: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '-')
        .collect();
    let features = rest[cores.len()..].to_string();
    let version = name
        .split('_')
        .filter_map(|p| p.strip_prefix('v').and_then(|v| v.parse::<u32>().ok()))
        .next_back()
        .unwrap_or(1);
    Parsed {
        family,
        cores,
        features,
        version,
    }
}

/// Classifies an Azure VM size name (case-insensitive, `Standard_` optional).
pub fn facts(vm_size: &str) -> VmSizeFacts {
    let p = parse(vm_size);
    let gpu = matches!(p.family.as_str(), "nc" | "nd" | "nv");
    let r = p.features.contains('r');
    let rdma = match p.family.as_str() {
        "a" if p.cores == "8" || p.cores == "9" => Some(Rdma::NetworkDirect),
        "h" if r => Some(Rdma::NetworkDirect),
        "hb" | "hc" | "hx" if r => Some(Rdma::SrIov),
        "nc" if r && p.version <= 2 => Some(Rdma::NetworkDirect),
        "nd" if r && p.version == 1 => Some(Rdma::NetworkDirect),
        "nc" | "nd" if r => Some(Rdma::SrIov),
        _ => None,
    };
    VmSizeFacts { rdma, gpu }
}

/// The value Batch Shipyard gave `gpus` when unset: `all` on GPU sizes.
pub fn default_gpus(vm_size: &str) -> Option<&'static str> {
    facts(vm_size).gpu.then_some("all")
}

/// The environment an MPI needs on InfiniBand over `rdma` (Batch Shipyard's values; names the
/// user set keep the user's value — the caller merges these under the user's).
pub fn fabric_env(runtime: MpiRuntime, rdma: Rdma) -> Vec<(&'static str, &'static str)> {
    match (runtime, rdma) {
        (MpiRuntime::IntelMpi | MpiRuntime::IntelMpiOfa, Rdma::NetworkDirect) => vec![
            ("I_MPI_FALLBACK", "0"),
            ("I_MPI_FABRICS", "shm:dapl"),
            ("I_MPI_DAPL_PROVIDER", "ofa-v2-ib0"),
            ("I_MPI_DYNAMIC_CONNECTION", "0"),
            ("I_MPI_DAPL_TRANSLATION_CACHE", "0"),
        ],
        (MpiRuntime::IntelMpiOfa, Rdma::SrIov) => {
            vec![("I_MPI_FALLBACK", "0"), ("I_MPI_FABRICS", "shm:ofa")]
        }
        (MpiRuntime::IntelMpi, Rdma::SrIov) => vec![
            ("I_MPI_FALLBACK", "0"),
            ("I_MPI_FABRICS", "shm:ofi"),
            ("FI_PROVIDER", "mlx"),
        ],
        // Batch Shipyard's `--mca pml ucx --mca btl ^vader,tcp,openib -x UCX_NET_DEVICES=...`,
        // as variables mpirun reads (and forwards to the ranks, see `mpi::launch_request`).
        (MpiRuntime::OpenMpi, Rdma::SrIov) => vec![
            ("OMPI_MCA_pml", "ucx"),
            ("OMPI_MCA_btl", "^vader,tcp,openib"),
            ("UCX_NET_DEVICES", "mlx5_0:1"),
        ],
        (MpiRuntime::Mpich | MpiRuntime::Mvapich, Rdma::SrIov) => {
            vec![("UCX_NET_DEVICES", "mlx5_0:1")]
        }
        _ => vec![],
    }
}

/// Where node preparation writes the InfiniBand partition key on SR-IOV nodes, under
/// `$AZ_BATCH_NODE_STARTUP_DIR` (the start task's working directory, as Batch Shipyard's
/// `shipyard_nodeprep.sh` does): one line `UCX_IB_PKEY=0x....`.
pub const UCX_IB_PKEY_FILE: &str = "wd/UCX_IB_PKEY";

/// The full partition key, beside [`UCX_IB_PKEY_FILE`]: one line `IB_PKEY=0x....`.
pub const IB_PKEY_FILE: &str = "wd/IB_PKEY";

/// The variable UCX reads the partition key from.
pub const UCX_IB_PKEY: &str = "UCX_IB_PKEY";

/// The node's path of [`UCX_IB_PKEY_FILE`], for a shell.
pub fn ucx_ib_pkey_path() -> String {
    format!("$AZ_BATCH_NODE_STARTUP_DIR/{UCX_IB_PKEY_FILE}")
}

/// Node-preparation statements (bash, no `set -e` needed) writing the partition key files on
/// an SR-IOV node: the larger of pkeys 0 and 1 of `mlx5_0` port 1 is the tenant's key; UCX
/// wants it without the membership bit (`key & 0x0fff`, 4 hex digits). Without the device the
/// node keeps no key file and says so on stderr (the start task still succeeds: a pool that
/// never uses InfiniBand is not broken by it).
pub fn partition_key_script() -> String {
    let pkeys = PKEYS_DIR;
    format!(
        "if [ -r {pkeys}/0 ]; then \
shipyard_pk0=$(cat {pkeys}/0); shipyard_pk1=$(cat {pkeys}/1 2>/dev/null || echo 0); \
shipyard_pk=$(( shipyard_pk0 > shipyard_pk1 ? shipyard_pk0 : shipyard_pk1 )); \
printf 'IB_PKEY=0x%04x\\n' \"$shipyard_pk\" > \"$AZ_BATCH_NODE_STARTUP_DIR/{IB_PKEY_FILE}\"; \
printf '{UCX_IB_PKEY}=0x%04x\\n' \"$(( shipyard_pk & 0x0fff ))\" > \"{ucx}\"; \
else echo 'shipyard: no InfiniBand partition keys at {pkeys}; {UCX_IB_PKEY} is not written' >&2; fi",
        ucx = ucx_ib_pkey_path(),
    )
}

/// The sysfs directory of the partition keys of `mlx5_0` port 1.
const PKEYS_DIR: &str = "/sys/class/infiniband/mlx5_0/ports/1/pkeys";

/// A POSIX-sh command printing the partition key [`partition_key_script`] wrote (`0x....`),
/// run where the launcher runs, when it runs: the value exists only on the node. Where the
/// file is missing (a pool prepared before shipyard wrote it) the key is computed the same way
/// from sysfs (the kernel prints every pkey as `0x%04x`, so the lexically largest is the
/// largest); with neither it prints nothing (and the shell says why on stderr).
pub fn partition_key_command() -> String {
    format!(
        "sed -n 's/^{UCX_IB_PKEY}=//p' \"{file}\" 2>/dev/null | grep . || \
printf '0x%04x' \"$(( $(sort -r {PKEYS_DIR}/0 {PKEYS_DIR}/1 2>/dev/null | head -n 1) & 0x0fff ))\"",
        file = ucx_ib_pkey_path()
    )
}

/// Whether an MPI on InfiniBand over `rdma` gives its ranks the partition key
/// ([`UCX_IB_PKEY`]): the UCX-based ones on SR-IOV, as Batch Shipyard does (Open MPI's
/// `-x UCX_IB_PKEY`, MPICH's and MVAPICH's `-env`); Intel MPI reaches UCX through libfabric's
/// mlx provider and gets none from Batch Shipyard.
pub fn uses_partition_key(runtime: MpiRuntime, rdma: Option<Rdma>) -> bool {
    rdma == Some(Rdma::SrIov)
        && matches!(
            runtime,
            MpiRuntime::OpenMpi | MpiRuntime::Mpich | MpiRuntime::Mvapich
        )
}

/// What Intel MPI's ranks get as `FI_PROVIDER` (libfabric's provider) where the user set none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FiProvider {
    /// The launcher's default (`tcp`: no InfiniBand, or not an Intel MPI).
    Default,
    /// This provider.
    Set(&'static str),
    /// None at all: the fabric does not use libfabric (DAPL on NetworkDirect, OFA).
    Unset,
}

/// The `FI_PROVIDER` of an MPI `runtime`, on InfiniBand or not, over `rdma` when the VM size
/// is known, as Batch Shipyard sets it: `mlx` for `intelmpi` on SR-IOV (and on InfiniBand of
/// a size it does not classify); nothing for `intelmpi-ofa` (OFA fabric) or on NetworkDirect
/// (DAPL fabric), where the tcp default would only mislead.
pub fn fi_provider(runtime: MpiRuntime, infiniband: bool, rdma: Option<Rdma>) -> FiProvider {
    match (runtime, infiniband, rdma) {
        (MpiRuntime::IntelMpi | MpiRuntime::IntelMpiOfa, true, Some(Rdma::NetworkDirect))
        | (MpiRuntime::IntelMpiOfa, true, _) => FiProvider::Unset,
        (MpiRuntime::IntelMpi, true, _) => FiProvider::Set("mlx"),
        _ => FiProvider::Default,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_classified_like_batch_shipyard() {
        let nd = Some(Rdma::NetworkDirect);
        let sr = Some(Rdma::SrIov);
        for (size, rdma, gpu) in [
            ("STANDARD_A8", nd, false),
            ("Standard_A9", nd, false),
            ("Standard_A2_v2", None, false),
            ("STANDARD_H16r", nd, false),
            ("Standard_H16mr", nd, false),
            ("Standard_H16", None, false),
            ("Standard_HB60rs", sr, false),
            ("Standard_HB120-16rs_v3", sr, false),
            ("Standard_HB176rs_v4", sr, false),
            ("Standard_HC44rs", sr, false),
            ("Standard_HX176rs", sr, false),
            ("Standard_NC24r", nd, true),
            ("Standard_NC24rs_v2", nd, true),
            ("Standard_NC24rs_v3", sr, true),
            ("Standard_NC6s_v3", None, true),
            ("Standard_NC24ads_A100_v4", None, true),
            ("Standard_ND24rs", nd, true),
            ("Standard_ND40rs_v2", sr, true),
            ("Standard_ND96asr_v4", sr, true),
            ("Standard_ND96amsr_A100_v4", sr, true),
            ("Standard_ND96isr_H100_v5", sr, true),
            ("Standard_NV12s_v3", None, true),
            ("Standard_D2s_v5", None, false),
            ("Standard_E64ds_v5", None, false),
        ] {
            assert_eq!(facts(size), VmSizeFacts { rdma, gpu }, "{size}");
        }
        assert_eq!(default_gpus("standard_nc6"), Some("all"));
        assert_eq!(default_gpus("Standard_D2s_v5"), None);
    }

    /// Runs [`partition_key_script`] with sysfs under `root` (pkeys `keys`, none when empty);
    /// returns the key files it wrote in the startup directory.
    fn run_key_script(keys: &[&str]) -> (Option<String>, Option<String>, String) {
        let dir = tempfile::tempdir().unwrap();
        let pkeys = dir.path().join("sys/class/infiniband/mlx5_0/ports/1/pkeys");
        std::fs::create_dir_all(&pkeys).unwrap();
        for (i, k) in keys.iter().enumerate() {
            std::fs::write(pkeys.join(i.to_string()), format!("{k}\n")).unwrap();
        }
        let startup = dir.path().join("startup");
        std::fs::create_dir_all(startup.join("wd")).unwrap();
        let script =
            partition_key_script().replace("/sys/", &format!("{}/sys/", dir.path().display()));
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg(format!("set -e; {script}"))
            .env("AZ_BATCH_NODE_STARTUP_DIR", &startup)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let read = |f: &str| std::fs::read_to_string(startup.join(f)).ok();
        (
            read(UCX_IB_PKEY_FILE),
            read(IB_PKEY_FILE),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    #[test]
    fn node_prep_writes_the_larger_pkey_without_the_membership_bit() {
        // the tenant's key is the larger one, wherever it is
        let (ucx, ib, _) = run_key_script(&["0x800b", "0x7fff"]);
        assert_eq!(ucx.as_deref(), Some("UCX_IB_PKEY=0x000b\n"));
        assert_eq!(ib.as_deref(), Some("IB_PKEY=0x800b\n"));
        let (ucx, ib, _) = run_key_script(&["0x7fff", "0x8a01"]);
        assert_eq!(ucx.as_deref(), Some("UCX_IB_PKEY=0x0a01\n"));
        assert_eq!(ib.as_deref(), Some("IB_PKEY=0x8a01\n"));
        // one key only
        let (ucx, _, _) = run_key_script(&["0xffff"]);
        assert_eq!(ucx.as_deref(), Some("UCX_IB_PKEY=0x0fff\n"));
        // no device: nothing written, the start task goes on, and says why
        let (ucx, ib, err) = run_key_script(&[]);
        assert_eq!((ucx, ib), (None, None));
        assert!(err.contains("no InfiniBand partition keys"), "{err}");
    }

    /// What [`partition_key_command`] gives a launch line (`"$(...)"`, run by `sh`), with the
    /// key file holding `file` and sysfs the pkeys `sysfs` (each absent when `None`/empty).
    fn launch_reads(file: Option<&str>, sysfs: &[&str]) -> String {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("wd")).unwrap();
        if let Some(f) = file {
            std::fs::write(dir.path().join(UCX_IB_PKEY_FILE), f).unwrap();
        }
        let pkeys = dir.path().join("sys/class/infiniband/mlx5_0/ports/1/pkeys");
        std::fs::create_dir_all(&pkeys).unwrap();
        for (i, k) in sysfs.iter().enumerate() {
            std::fs::write(pkeys.join(i.to_string()), format!("{k}\n")).unwrap();
        }
        let cmd =
            partition_key_command().replace("/sys/", &format!("{}/sys/", dir.path().display()));
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("printf %s \"$({cmd})\""))
            .env("AZ_BATCH_NODE_STARTUP_DIR", dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn launcher_reads_the_key_node_prep_wrote() {
        // the file wins over sysfs
        assert_eq!(
            launch_reads(Some("UCX_IB_PKEY=0x000b\n"), &["0x8001", "0x7fff"]),
            "0x000b"
        );
        // no file (a pool prepared before it was written): computed from sysfs alike
        assert_eq!(launch_reads(None, &["0x7fff", "0x800b"]), "0x000b");
        assert_eq!(launch_reads(Some(""), &["0x8a01", "0x7fff"]), "0x0a01");
        // neither: nothing
        assert_eq!(launch_reads(None, &[]), "");
        assert!(uses_partition_key(MpiRuntime::Mvapich, Some(Rdma::SrIov)));
        assert!(!uses_partition_key(
            MpiRuntime::OpenMpi,
            Some(Rdma::NetworkDirect)
        ));
        assert!(!uses_partition_key(MpiRuntime::IntelMpi, Some(Rdma::SrIov)));
        assert_eq!(
            fi_provider(MpiRuntime::IntelMpi, true, Some(Rdma::SrIov)),
            FiProvider::Set("mlx")
        );
        assert_eq!(
            fi_provider(MpiRuntime::IntelMpi, true, Some(Rdma::NetworkDirect)),
            FiProvider::Unset
        );
        assert_eq!(
            fi_provider(MpiRuntime::OpenMpi, true, Some(Rdma::SrIov)),
            FiProvider::Default
        );
    }

    #[test]
    fn fabric_settings_per_mpi() {
        let env = fabric_env(MpiRuntime::IntelMpi, Rdma::SrIov);
        assert!(env.contains(&("FI_PROVIDER", "mlx")));
        let env = fabric_env(MpiRuntime::IntelMpiOfa, Rdma::SrIov);
        assert!(env.contains(&("I_MPI_FABRICS", "shm:ofa")));
        let env = fabric_env(MpiRuntime::IntelMpi, Rdma::NetworkDirect);
        assert!(env.contains(&("I_MPI_DAPL_PROVIDER", "ofa-v2-ib0")));
        assert!(fabric_env(MpiRuntime::OpenMpi, Rdma::SrIov).contains(&("OMPI_MCA_pml", "ucx")));
        assert!(fabric_env(MpiRuntime::OpenMpi, Rdma::NetworkDirect).is_empty());
    }
}
