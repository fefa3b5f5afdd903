//! Which hosts a configuration may send credentials to (issue 13, finding 5).
//!
//! A shared config could otherwise point `account_service_url` or `aad.authority_url` at any
//! host and collect the user's Shared Key signatures or Entra ID client secret:
//!
//! - both URLs must be `https`, except on loopback (`localhost`, `127.0.0.0/8`, `::1`), where
//!   `http` is allowed for `shipyard serve` and test servers;
//! - the host must be a Batch account host (`*.batch.azure.com` and the sovereign clouds'
//!   suffixes) or an Entra ID authority host of the public or a sovereign cloud, unless
//!   `[credentials.batch] allow_custom_endpoints = true` opts in (a private endpoint or proxy).
//!
//! See `docs/security.md`.

/// Batch account host suffixes: public cloud, Azure China, Azure US Government, Azure Germany.
pub const BATCH_HOST_SUFFIXES: [&str; 4] = [
    ".batch.azure.com",
    ".batch.chinacloudapi.cn",
    ".batch.usgovcloudapi.net",
    ".batch.microsoftazure.de",
];

/// Entra ID authority hosts: public cloud, Azure China (both names), Azure US Government,
/// Azure Germany.
pub const ENTRA_HOSTS: [&str; 5] = [
    "login.microsoftonline.com",
    "login.chinacloudapi.cn",
    "login.partner.microsoftonline.cn",
    "login.microsoftonline.us",
    "login.microsoftonline.de",
];

/// What a URL is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `account_service_url`.
    BatchAccount,
    /// `aad.authority_url`.
    EntraAuthority,
}

fn is_loopback(host: &url::Host<&str>) -> bool {
    match host {
        url::Host::Domain(d) => d.eq_ignore_ascii_case("localhost"),
        url::Host::Ipv4(ip) => ip.is_loopback(),
        url::Host::Ipv6(ip) => ip.is_loopback(),
    }
}

/// Checks `value` as an `endpoint` URL; `Err` says why it is refused.
pub fn check(value: &str, endpoint: Endpoint, allow_custom: bool) -> Result<(), String> {
    let url = url::Url::parse(value).map_err(|e| format!("not a URL ({e})"))?;
    let host = url.host().ok_or_else(|| format!("`{value}` has no host"))?;
    let loopback = is_loopback(&host);
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        "http" => return Err(
            "must use https (plain http is allowed only on loopback: localhost, 127.0.0.1, ::1)"
                .into(),
        ),
        other => return Err(format!("scheme `{other}` is not allowed; use https")),
    }
    if loopback || allow_custom {
        return Ok(());
    }
    let name = match host {
        url::Host::Domain(d) => d.to_ascii_lowercase(),
        other => other.to_string(),
    };
    let known = match endpoint {
        Endpoint::BatchAccount => BATCH_HOST_SUFFIXES.iter().any(|s| name.ends_with(s)),
        Endpoint::EntraAuthority => ENTRA_HOSTS.contains(&name.as_str()),
    };
    if known {
        return Ok(());
    }
    let expected = match endpoint {
        Endpoint::BatchAccount => format!(
            "a Batch account host (*{})",
            BATCH_HOST_SUFFIXES.join(", *")
        ),
        Endpoint::EntraAuthority => format!("an Entra ID authority ({})", ENTRA_HOSTS.join(", ")),
    };
    Err(format!(
        "host `{name}` is not {expected}; set `allow_custom_endpoints = true` in [credentials.batch] \
         to send credentials there"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_to_known_clouds_and_loopback_pass() {
        for (url, e) in [
            (
                "https://mybatch.westeurope.batch.azure.com",
                Endpoint::BatchAccount,
            ),
            (
                "https://b.chinanorth.batch.chinacloudapi.cn/",
                Endpoint::BatchAccount,
            ),
            (
                "https://b.usgovvirginia.batch.usgovcloudapi.net",
                Endpoint::BatchAccount,
            ),
            ("http://127.0.0.1:8711", Endpoint::BatchAccount),
            ("http://localhost:8711", Endpoint::BatchAccount),
            ("http://[::1]:8711", Endpoint::EntraAuthority),
            (
                "https://login.microsoftonline.com",
                Endpoint::EntraAuthority,
            ),
            (
                "https://login.microsoftonline.us/",
                Endpoint::EntraAuthority,
            ),
        ] {
            assert_eq!(check(url, e, false), Ok(()), "{url}");
        }
    }

    #[test]
    fn other_schemes_and_hosts_are_refused() {
        let refused = |url: &str, e, custom| check(url, e, custom).expect_err(url);
        assert!(refused(
            "http://mybatch.westeurope.batch.azure.com",
            Endpoint::BatchAccount,
            false
        )
        .contains("https"));
        // Even with the opt-in: plain http off loopback sends signatures in the clear.
        assert!(refused("http://10.0.0.5", Endpoint::BatchAccount, true).contains("https"));
        assert!(refused("ftp://x.batch.azure.com", Endpoint::BatchAccount, false).contains("ftp"));
        let e = refused("https://evil.example.com", Endpoint::BatchAccount, false);
        assert!(
            e.contains("evil.example.com") && e.contains("allow_custom_endpoints"),
            "{e}"
        );
        // A suffix must be a suffix: batch.azure.com.evil.example is not a Batch host.
        refused(
            "https://x.batch.azure.com.evil.example",
            Endpoint::BatchAccount,
            false,
        );
        refused(
            "https://login.microsoftonline.com.evil.example",
            Endpoint::EntraAuthority,
            false,
        );
        refused(
            "https://mybatch.westeurope.batch.azure.com",
            Endpoint::EntraAuthority,
            false,
        );
        assert_eq!(
            check("https://batch.corp.example", Endpoint::BatchAccount, true),
            Ok(())
        );
    }
}
