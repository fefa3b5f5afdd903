//! Pure translations of Batch Shipyard values into shipyard's.

/// Batch Shipyard's wall-time forms → ISO 8601 (shipyard's domain accepts them too).
pub use shipyard_runtime::domain::wall_time_to_iso8601;

/// The Batch account name in a service URL, as Batch Shipyard derives it
/// (`https://mybatch.westeurope.batch.azure.com` → `mybatch`).
pub fn account_name_from_service_url(url: &str) -> Result<String, String> {
    let host = url
        .trim()
        .trim_end_matches('/')
        .split("://")
        .last()
        .unwrap_or_default();
    let mut labels = host.split('.');
    match (labels.next(), labels.next()) {
        (Some(name), Some(_region)) if !name.is_empty() => Ok(name.to_string()),
        _ => Err(format!(
            "`{url}` is not a Batch account URL like `https://<account>.<region>.batch.azure.com`"
        )),
    }
}

/// A marketplace image that Azure Batch no longer supports, with what to use instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetiredImage {
    /// Why it is retired.
    pub reason: &'static str,
    /// `publisher/offer/sku` to use instead.
    pub replacement: &'static str,
}

const UBUNTU_HPC: &str = "microsoft-dsvm/ubuntu-hpc/2204";

/// Retired or end-of-life images Batch Shipyard recipes used.
pub fn retired_image(publisher: &str, offer: &str, sku: &str) -> Option<RetiredImage> {
    let (p, o, s) = (
        publisher.to_ascii_lowercase(),
        offer.to_ascii_lowercase(),
        sku.to_ascii_lowercase(),
    );
    let r = |reason, replacement| {
        Some(RetiredImage {
            reason,
            replacement,
        })
    };
    match (p.as_str(), o.as_str()) {
        ("openlogic", o) if o.starts_with("centos") => {
            r("CentOS 7/8 reached end of life (June 2024)", UBUNTU_HPC)
        }
        ("microsoft-azure-batch", o) if o.starts_with("centos-container") => r(
            "Batch's CentOS container images were retired with CentOS",
            UBUNTU_HPC,
        ),
        ("microsoft-azure-batch", "ubuntu-server-container") => r(
            "Batch's Ubuntu container images (16.04, 20.04) are retired",
            UBUNTU_HPC,
        ),
        ("canonical", "ubuntuserver") => r(
            "Ubuntu 16.04/18.04 are out of standard support and no longer offered to Batch",
            "canonical/0001-com-ubuntu-server-jammy/22_04-lts",
        ),
        ("canonical", "0001-com-ubuntu-server-focal") => r(
            "Ubuntu 20.04 is out of standard support (May 2025)",
            "canonical/0001-com-ubuntu-server-jammy/22_04-lts",
        ),
        ("microsoft-dsvm", "ubuntu-hpc") if s.starts_with("18") || s.starts_with("20") => {
            r("Ubuntu HPC 18.04/20.04 images are retired", UBUNTU_HPC)
        }
        ("credativ", "debian") => r("Debian 8-10 images are end of life", "debian/debian-12/12"),
        _ => None,
    }
}

/// The Batch node agent SKU of a marketplace image (Batch Shipyard asked the service; shipyard
/// knows the images its users run). `None` when unknown.
pub fn node_agent_sku_id(publisher: &str, offer: &str, sku: &str) -> Option<String> {
    let (p, o, s) = (
        publisher.to_ascii_lowercase(),
        offer.to_ascii_lowercase(),
        sku.to_ascii_lowercase(),
    );
    if p.contains("windows") || o.contains("windows") {
        return Some("batch.node.windows amd64".into());
    }
    let digits: String = s.chars().filter(|c| c.is_ascii_digit()).collect();
    let ubuntu = |v: &str| Some(format!("batch.node.ubuntu {v}"));
    let ubuntu_version = |d: &str| match d.get(..4) {
        Some("1604") => ubuntu("16.04"),
        Some("1804") => ubuntu("18.04"),
        Some("2004") => ubuntu("20.04"),
        Some("2204") => ubuntu("22.04"),
        Some("2404") => ubuntu("24.04"),
        _ => None,
    };
    let major = digits.chars().next();
    match (p.as_str(), o.as_str()) {
        (_, o) if o.contains("ubuntu") => ubuntu_version(&digits),
        ("canonical", _) => ubuntu_version(&digits),
        ("openlogic", _) | ("microsoft-azure-batch", _) if o.contains("centos") => {
            Some(format!("batch.node.centos {}", major?))
        }
        (_, o) if o.contains("almalinux") || o.contains("rocky") || o.contains("rhel") => {
            Some(format!("batch.node.el {}", major?))
        }
        ("credativ", "debian") | ("debian", _) => {
            let v: String = digits.chars().take(2).collect();
            let v = if v.starts_with('1') {
                v
            } else {
                v[..1].to_string()
            };
            Some(format!("batch.node.debian {v}"))
        }
        _ => None,
    }
}

/// `num_instances` keywords Batch Shipyard accepts (resolved by shipyard at submit time).
pub const NUM_INSTANCES_KEYWORDS: [&str; 5] = [
    "pool_current_dedicated",
    "pool_current_low_priority",
    "pool_specification_vm_count",
    "pool_specification_vm_count_dedicated",
    "pool_specification_vm_count_low_priority",
];

/// MPI runtimes of Batch Shipyard's schema (kept as written).
pub const MPI_RUNTIMES: [&str; 5] = ["intelmpi", "intelmpi-ofa", "mpich", "mvapich", "openmpi"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wall_times() {
        for (bs, iso) in [
            ("02:00:00", "PT2H"),
            ("00:30:15", "PT30M15S"),
            ("1.12:30:00", "P1DT12H30M"),
            ("48:00:00", "P2D"),
            ("00:00:00", "PT0S"),
            ("7.00:00:01", "P7DT1S"),
            ("PT1H", "PT1H"),
        ] {
            assert_eq!(wall_time_to_iso8601(bs).as_deref(), Ok(iso), "{bs}");
        }
        for bad in ["2h", "1:00", "a.01:00:00", "1.2.3:00:00", ""] {
            assert!(wall_time_to_iso8601(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn account_names() {
        assert_eq!(
            account_name_from_service_url("https://mybatch.westeurope.batch.azure.com/").unwrap(),
            "mybatch"
        );
        assert!(account_name_from_service_url("https://localhost").is_err());
    }

    #[test]
    fn node_agents() {
        let na = |p, o, s| node_agent_sku_id(p, o, s);
        assert_eq!(
            na("microsoft-dsvm", "ubuntu-hpc", "2204").as_deref(),
            Some("batch.node.ubuntu 22.04")
        );
        assert_eq!(
            na("Canonical", "UbuntuServer", "18.04-LTS").as_deref(),
            Some("batch.node.ubuntu 18.04")
        );
        assert_eq!(
            na("canonical", "0001-com-ubuntu-server-jammy", "22_04-lts").as_deref(),
            Some("batch.node.ubuntu 22.04")
        );
        assert_eq!(
            na("OpenLogic", "CentOS-HPC", "7.7").as_deref(),
            Some("batch.node.centos 7")
        );
        assert_eq!(
            na("microsoft-azure-batch", "centos-container-rdma", "7-7").as_deref(),
            Some("batch.node.centos 7")
        );
        assert_eq!(
            na("almalinux", "almalinux-hpc", "8_7-hpc-gen2").as_deref(),
            Some("batch.node.el 8")
        );
        assert_eq!(
            na("credativ", "Debian", "10").as_deref(),
            Some("batch.node.debian 10")
        );
        assert_eq!(
            na("MicrosoftWindowsServer", "WindowsServer", "2022-datacenter").as_deref(),
            Some("batch.node.windows amd64")
        );
        assert_eq!(na("someone", "something", "1"), None);
    }

    #[test]
    fn retired_images_name_a_replacement() {
        let r = retired_image("OpenLogic", "CentOS-HPC", "7.7").unwrap();
        assert_eq!(r.replacement, "microsoft-dsvm/ubuntu-hpc/2204");
        assert!(retired_image("microsoft-dsvm", "ubuntu-hpc", "2204").is_none());
    }
}
