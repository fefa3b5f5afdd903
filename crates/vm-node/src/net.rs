//! Picking a free private /24 for a pool's bridge.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use crate::cmd::{run, Binaries};
use crate::error::{Result, VmNodeError};

/// A claimed /24: `a.b.c.0/24`, gateway `a.b.c.1` on the bridge, nodes from `a.b.c.2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Subnet(pub [u8; 3]);

impl Subnet {
    pub fn host(&self, last: u8) -> Ipv4Addr {
        Ipv4Addr::new(self.0[0], self.0[1], self.0[2], last)
    }
    fn network(&self) -> u32 {
        u32::from(self.host(0))
    }
    pub fn overlaps(&self, net: u32, len: u32) -> bool {
        let len = len.min(24);
        let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
        self.network() & mask == net & mask
    }
}

/// IPv4 prefixes in use on this machine (interface addresses and routes), as (network, len).
pub(crate) fn used_prefixes(bins: &Binaries) -> Result<Vec<(u32, u32)>> {
    let mut out = Vec::new();
    let addrs = run("pool setup", &bins.ip, ["-o", "-4", "addr", "show"])?;
    let routes = run(
        "pool setup",
        &bins.ip,
        ["-4", "route", "show", "table", "all"],
    )?;
    let text = String::from_utf8_lossy(&addrs.stdout).into_owned()
        + &String::from_utf8_lossy(&routes.stdout);
    for word in text.split_whitespace() {
        let (addr, len) = match word.split_once('/') {
            Some((a, l)) => (a, l.parse::<u32>().unwrap_or(32)),
            None => (word, 32),
        };
        // Shorter than /8 is a default-like route, not a use of addresses.
        if let (Ok(ip), true) = (addr.parse::<Ipv4Addr>(), len >= 8) {
            out.push((u32::from(ip), len.min(32)));
        }
    }
    Ok(out)
}

/// Claims the first /24 in `base.0.0/16` that no interface, route or other pool uses, by
/// creating `claims/<a.b.c>` exclusively. Returns the subnet and the claim file.
pub(crate) fn claim_subnet(
    bins: &Binaries,
    base: [u8; 2],
    claims: &Path,
    pool_id: &str,
) -> Result<(Subnet, PathBuf)> {
    std::fs::create_dir_all(claims)
        .map_err(|e| VmNodeError::io("pool setup", "creating", claims, e))?;
    let used = used_prefixes(bins)?;
    for c in 0..=255u8 {
        let subnet = Subnet([base[0], base[1], c]);
        if used.iter().any(|&(net, len)| subnet.overlaps(net, len)) {
            continue;
        }
        let claim = claims.join(format!("{}.{}.{}", base[0], base[1], c));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&claim)
        {
            Ok(_) => {
                std::fs::write(&claim, pool_id)
                    .map_err(|e| VmNodeError::io("pool setup", "writing", &claim, e))?;
                return Ok((subnet, claim));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(VmNodeError::io("pool setup", "creating", &claim, e)),
        }
    }
    Err(VmNodeError::NoFreeSubnet {
        range: format!("{}.{}.0.0/16", base[0], base[1]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_is_prefix_aware() {
        let s = Subnet([10, 213, 4]);
        assert!(s.overlaps(u32::from(Ipv4Addr::new(10, 213, 4, 7)), 32));
        assert!(s.overlaps(u32::from(Ipv4Addr::new(10, 0, 0, 0)), 8));
        assert!(!s.overlaps(u32::from(Ipv4Addr::new(10, 213, 5, 0)), 24));
    }
}
