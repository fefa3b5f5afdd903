//! Shared access signatures: service SAS for containers and blobs and account SAS, signed from
//! an account name and key as the Azure Storage REST documents describe ("Create a service
//! SAS", "Create an account SAS", signed version 2020-12-06 and later), or a ready SAS token.

use std::fmt;

use shipyard_batch_api::auth::SigningKey;
use shipyard_batch_api::Secret;
use time::OffsetDateTime;
use url::Url;

use crate::error::{Result, StorageError};
use crate::location::SasUrl;

/// The signed version (`sv`) of every SAS this crate signs, and the `x-ms-version` it sends.
pub const STORAGE_VERSION: &str = "2022-11-02";

/// The operations a SAS grants. Rendered in the documented order (`racwdl`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SasPermissions {
    /// `r`: read blobs (Get Blob) and their properties.
    pub read: bool,
    /// `a`: add blocks to append blobs.
    pub add: bool,
    /// `c`: create new blobs (and, in an account SAS, containers).
    pub create: bool,
    /// `w`: write blobs (Put Blob, Put Block, Put Block List).
    pub write: bool,
    /// `d`: delete blobs.
    pub delete: bool,
    /// `l`: list blobs (container SAS and account SAS only).
    pub list: bool,
}

impl SasPermissions {
    /// Read and list: what Batch needs for a resource-file `storageContainerUrl`.
    pub const READ_LIST: SasPermissions = SasPermissions {
        read: true,
        add: false,
        create: false,
        write: false,
        delete: false,
        list: true,
    };
    /// Create and write: what Batch needs for an output-file `containerUrl`.
    pub const WRITE: SasPermissions = SasPermissions {
        read: false,
        add: false,
        create: true,
        write: true,
        delete: false,
        list: false,
    };

    /// The `sp` value, e.g. `rl` or `cw`.
    pub fn as_sp(&self) -> String {
        [
            (self.read, 'r'),
            (self.add, 'a'),
            (self.create, 'c'),
            (self.write, 'w'),
            (self.delete, 'd'),
            (self.list, 'l'),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, c)| *c)
        .collect()
    }

    /// Parses an `sp` value made of `racwdl` letters in any order.
    pub fn parse(sp: &str) -> Option<SasPermissions> {
        let mut p = SasPermissions::default();
        for c in sp.chars() {
            match c {
                'r' => p.read = true,
                'a' => p.add = true,
                'c' => p.create = true,
                'w' => p.write = true,
                'd' => p.delete = true,
                'l' => p.list = true,
                _ => return None,
            }
        }
        Some(p)
    }
}

/// The protocols a SAS allows (`spr`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SasProtocol {
    /// `https` only.
    #[default]
    Https,
    /// `https,http` (needed for Azurite and other plain-HTTP endpoints).
    HttpsAndHttp,
}

impl SasProtocol {
    /// The `spr` value.
    pub fn as_str(self) -> &'static str {
        match self {
            SasProtocol::Https => "https",
            SasProtocol::HttpsAndHttp => "https,http",
        }
    }
}

/// The validity and rights of a SAS to sign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SasOptions {
    /// What the SAS allows.
    pub permissions: SasPermissions,
    /// When it becomes valid (`st`); `None` means at once.
    pub start: Option<OffsetDateTime>,
    /// When it stops being valid (`se`).
    pub expiry: OffsetDateTime,
    /// `None` omits `spr` (both protocols allowed).
    pub protocol: Option<SasProtocol>,
}

impl SasOptions {
    /// `permissions` from now until `valid_for` from now, HTTPS only.
    pub fn new(permissions: SasPermissions, valid_for: std::time::Duration) -> SasOptions {
        let now = OffsetDateTime::now_utc();
        SasOptions {
            permissions,
            start: None,
            expiry: now + valid_for,
            protocol: Some(SasProtocol::Https),
        }
    }
}

/// A SAS token: the query string of a SAS URL (without `?`). `Debug` is redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct SasToken(String);

impl SasToken {
    /// Accepts a ready-made token, with or without a leading `?`. It must carry `sig=`.
    pub fn parse(token: &str) -> Result<SasToken> {
        let token = token.trim().trim_start_matches('?');
        if token.is_empty() {
            return Err(StorageError::InvalidSasToken {
                reason: "it is empty",
            });
        }
        if !token.split('&').any(|p| p.starts_with("sig=")) {
            return Err(StorageError::InvalidSasToken {
                reason: "it has no sig= parameter",
            });
        }
        Ok(SasToken(token.to_string()))
    }

    /// The token. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SasToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SasToken(<redacted>)")
    }
}

/// The resource a service SAS is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SasResource<'a> {
    /// A container (`sr=c`).
    Container(&'a str),
    /// A blob in a container (`sr=b`).
    Blob {
        /// The container.
        container: &'a str,
        /// The blob name.
        blob: &'a str,
    },
}

fn sas_time(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// The `spr` line of a string-to-sign: empty when any protocol is allowed.
fn spr(options: &SasOptions) -> String {
    options
        .protocol
        .map(|p| p.as_str().to_string())
        .unwrap_or_default()
}

/// The string-to-sign of a service SAS for a blob or container, version 2020-12-06 and later:
/// sp, st, se, canonicalized resource, si, sip, spr, sv, sr, snapshot time, ses, and the five
/// response-header overrides (rscc, rscd, rsce, rscl, rsct), separated by newlines. No stored
/// policy, IP range, snapshot, encryption scope or header override is set.
pub fn service_sas_string_to_sign(
    account: &str,
    resource: SasResource<'_>,
    options: &SasOptions,
) -> String {
    let (canonical, sr) = match resource {
        SasResource::Container(c) => (format!("/blob/{account}/{c}"), "c"),
        SasResource::Blob { container, blob } => {
            (format!("/blob/{account}/{container}/{blob}"), "b")
        }
    };
    [
        options.permissions.as_sp(),
        options.start.map(sas_time).unwrap_or_default(),
        sas_time(options.expiry),
        canonical,
        String::new(), // signedIdentifier
        String::new(), // signedIP
        spr(options),
        STORAGE_VERSION.to_string(),
        sr.to_string(),
        String::new(), // signedSnapshotTime
        String::new(), // signedEncryptionScope
        String::new(), // rscc
        String::new(), // rscd
        String::new(), // rsce
        String::new(), // rscl
        String::new(), // rsct
    ]
    .join("\n")
}

/// The string-to-sign of an account SAS for the blob service on service, container and object
/// resource types (`ss=b`, `srt=sco`), version 2020-12-06 and later.
pub fn account_sas_string_to_sign(account: &str, options: &SasOptions) -> String {
    let mut s = [
        account.to_string(),
        options.permissions.as_sp(),
        "b".to_string(),
        "sco".to_string(),
        options.start.map(sas_time).unwrap_or_default(),
        sas_time(options.expiry),
        String::new(), // signedIP
        spr(options),
        STORAGE_VERSION.to_string(),
        String::new(), // signedEncryptionScope
    ]
    .join("\n");
    s.push('\n');
    s
}

/// An account name and its key, which signs SAS tokens. `Debug` hides the key.
#[derive(Clone, Debug)]
pub struct AccountKey {
    account: String,
    key: SigningKey,
}

impl AccountKey {
    /// Decodes the base64 account key of `account`.
    pub fn new(account: impl Into<String>, key: &Secret) -> Result<AccountKey> {
        let account = account.into();
        let key =
            SigningKey::from_base64(key.expose()).map_err(|_| StorageError::InvalidAccountKey {
                account: account.clone(),
            })?;
        Ok(AccountKey { account, key })
    }

    /// The account name.
    pub fn account(&self) -> &str {
        &self.account
    }

    /// A service SAS token for a container or blob.
    pub fn service_sas(&self, resource: SasResource<'_>, options: &SasOptions) -> SasToken {
        let sig = self.key.sign(&service_sas_string_to_sign(
            &self.account,
            resource,
            options,
        ));
        let sr = match resource {
            SasResource::Container(_) => "c",
            SasResource::Blob { .. } => "b",
        };
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        q.append_pair("sv", STORAGE_VERSION);
        if let Some(st) = options.start {
            q.append_pair("st", &sas_time(st));
        }
        q.append_pair("se", &sas_time(options.expiry));
        q.append_pair("sr", sr);
        q.append_pair("sp", &options.permissions.as_sp());
        if let Some(p) = options.protocol {
            q.append_pair("spr", p.as_str());
        }
        q.append_pair("sig", &sig);
        SasToken(q.finish())
    }

    /// An account SAS token for the blob service (all resource types).
    pub fn account_sas(&self, options: &SasOptions) -> SasToken {
        let sig = self
            .key
            .sign(&account_sas_string_to_sign(&self.account, options));
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        q.append_pair("sv", STORAGE_VERSION);
        q.append_pair("ss", "b");
        q.append_pair("srt", "sco");
        q.append_pair("sp", &options.permissions.as_sp());
        if let Some(st) = options.start {
            q.append_pair("st", &sas_time(st));
        }
        q.append_pair("se", &sas_time(options.expiry));
        if let Some(p) = options.protocol {
            q.append_pair("spr", p.as_str());
        }
        q.append_pair("sig", &sig);
        SasToken(q.finish())
    }
}

/// How shipyard reaches a storage account: `credentials.storage` as account + key, or a SAS.
#[derive(Debug, Clone)]
pub enum StorageCredential {
    /// The account key: shipyard signs a service SAS per container itself.
    Key(AccountKey),
    /// A ready SAS token (an account SAS, or one valid for the containers used), attached as is.
    Sas(SasToken),
}

/// A storage account's blob endpoint and the credential for it.
#[derive(Debug, Clone)]
pub struct StorageAccount {
    endpoint: Url,
    account: String,
    credential: StorageCredential,
}

impl StorageAccount {
    /// The account at `https://{account}.blob.{endpoint_suffix}/` (suffix e.g. `core.windows.net`).
    pub fn new(
        account: impl Into<String>,
        endpoint_suffix: &str,
        credential: StorageCredential,
    ) -> Result<StorageAccount> {
        let account = account.into();
        let url = format!("https://{account}.blob.{endpoint_suffix}/");
        StorageAccount::with_endpoint(account, &url, credential)
    }

    /// The account at an explicit blob endpoint, e.g. Azurite's
    /// `http://127.0.0.1:10000/devstoreaccount1`.
    pub fn with_endpoint(
        account: impl Into<String>,
        blob_endpoint: &str,
        credential: StorageCredential,
    ) -> Result<StorageAccount> {
        let mut endpoint = SasUrl::parse(blob_endpoint)?.url().clone();
        endpoint.set_query(None);
        if !endpoint.path().ends_with('/') {
            let path = format!("{}/", endpoint.path());
            endpoint.set_path(&path);
        }
        Ok(StorageAccount {
            endpoint,
            account: account.into(),
            credential,
        })
    }

    /// The account name.
    pub fn account(&self) -> &str {
        &self.account
    }

    /// The SAS protocol its endpoint needs: `https,http` for a plain-HTTP endpoint (Azurite),
    /// `https` otherwise.
    pub fn sas_protocol(&self) -> SasProtocol {
        if self.endpoint.scheme() == "http" {
            SasProtocol::HttpsAndHttp
        } else {
            SasProtocol::Https
        }
    }

    /// The blob endpoint, with a trailing `/`.
    pub fn endpoint(&self) -> &str {
        self.endpoint.as_str()
    }

    fn with_token(&self, path: &str, token: &SasToken) -> Result<SasUrl> {
        let mut url = self
            .endpoint
            .join(path)
            .map_err(|e| StorageError::InvalidUrl {
                url: format!("{}{path}", self.endpoint),
                reason: e.to_string(),
            })?;
        url.set_query(Some(token.expose()));
        Ok(SasUrl::from_url(url))
    }

    fn encoded(name: &str) -> String {
        name.split('/')
            .map(|s| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>())
            .map(|s| s.replace('+', "%20"))
            .collect::<Vec<_>>()
            .join("/")
    }

    /// A container URL with a SAS: signed by shipyard (key) or the given token (SAS).
    pub fn container_url(&self, container: &str, options: &SasOptions) -> Result<SasUrl> {
        let token = match &self.credential {
            StorageCredential::Key(k) => k.service_sas(SasResource::Container(container), options),
            StorageCredential::Sas(t) => t.clone(),
        };
        self.with_token(&StorageAccount::encoded(container), &token)
    }

    /// A blob URL with a SAS: signed by shipyard (key) or the given token (SAS).
    pub fn blob_url(&self, container: &str, blob: &str, options: &SasOptions) -> Result<SasUrl> {
        let token = match &self.credential {
            StorageCredential::Key(k) => {
                k.service_sas(SasResource::Blob { container, blob }, options)
            }
            StorageCredential::Sas(t) => t.clone(),
        };
        let path = format!(
            "{}/{}",
            StorageAccount::encoded(container),
            StorageAccount::encoded(blob)
        );
        self.with_token(&path, &token)
    }

    /// The account endpoint with an account SAS (key) or the given token (SAS): for
    /// account-level operations such as Create Container.
    pub fn account_url(&self, options: &SasOptions) -> Result<SasUrl> {
        let token = match &self.credential {
            StorageCredential::Key(k) => k.account_sas(options),
            StorageCredential::Sas(t) => t.clone(),
        };
        self.with_token("", &token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    /// Azurite's published development account key.
    const DEV_KEY: &str =
        "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

    fn options() -> SasOptions {
        SasOptions {
            permissions: SasPermissions::READ_LIST,
            start: Some(datetime!(2024-01-02 03:04:05 UTC)),
            expiry: datetime!(2024-01-03 03:04:05 +02:00),
            protocol: Some(SasProtocol::HttpsAndHttp),
        }
    }

    #[test]
    fn permissions_render_in_documented_order() {
        let all = SasPermissions::parse("ldwcar");
        assert_eq!(all.map(|p| p.as_sp()).as_deref(), Some("racwdl"));
        assert_eq!(SasPermissions::WRITE.as_sp(), "cw");
        assert_eq!(SasPermissions::parse("rx"), None);
    }

    #[test]
    fn service_sas_string_to_sign_has_the_2020_12_06_layout() {
        let s = service_sas_string_to_sign("acct", SasResource::Container("data"), &options());
        assert_eq!(
            s,
            "rl\n2024-01-02T03:04:05Z\n2024-01-03T01:04:05Z\n/blob/acct/data\n\n\nhttps,http\n\
             2022-11-02\nc\n\n\n\n\n\n\n"
        );
        assert_eq!(s.split('\n').count(), 16);
        let b = service_sas_string_to_sign(
            "acct",
            SasResource::Blob {
                container: "data",
                blob: "d/x.bin",
            },
            &SasOptions {
                start: None,
                protocol: None,
                ..options()
            },
        );
        assert_eq!(
            b,
            "rl\n\n2024-01-03T01:04:05Z\n/blob/acct/data/d/x.bin\n\n\n\n2022-11-02\nb\n\n\n\n\n\n\n"
        );
    }

    #[test]
    fn account_sas_string_to_sign_ends_with_a_newline() {
        let s = account_sas_string_to_sign("acct", &options());
        assert_eq!(
            s,
            "acct\nrl\nb\nsco\n2024-01-02T03:04:05Z\n2024-01-03T01:04:05Z\n\nhttps,http\n2022-11-02\n\n"
        );
    }

    /// The signature is HMAC-SHA256 over the string-to-sign with the decoded key, base64. The
    /// expected value was computed independently with
    /// `printf 'rl\n2024-01-02T03:04:05Z\n2024-01-03T01:04:05Z\n/blob/devstoreaccount1/data\n\n\nhttps,http\n2022-11-02\nc\n\n\n\n\n\n\n'
    /// | openssl dgst -sha256 -mac HMAC -macopt hexkey:$(base64 -d <<<$KEY | xxd -p -c256) -binary | base64`.
    #[test]
    fn service_sas_token_is_signed_with_the_decoded_key() -> Result<()> {
        let key = AccountKey::new("devstoreaccount1", &Secret::new(DEV_KEY))?;
        let t = key.service_sas(SasResource::Container("data"), &options());
        assert_eq!(
            t.expose(),
            format!(
                "sv=2022-11-02&st=2024-01-02T03%3A04%3A05Z&se=2024-01-03T01%3A04%3A05Z&sr=c&sp=rl\
                 &spr=https%2Chttp&sig={}",
                url::form_urlencoded::byte_serialize(EXPECTED_SIG.as_bytes()).collect::<String>()
            )
        );
        assert_eq!(format!("{t:?}"), "SasToken(<redacted>)");
        Ok(())
    }
    const EXPECTED_SIG: &str = "Ir99lPwBCf3LNbIBsn9ZiTg5COidvnnxpkJYA8t77i8=";

    #[test]
    fn bad_key_is_refused_without_showing_it() {
        let e = AccountKey::new("acct", &Secret::new("not base64!!")).err();
        let msg = e.map(|e| e.to_string()).unwrap_or_default();
        assert!(
            msg.contains("acct") && !msg.contains("not base64!!"),
            "{msg}"
        );
    }

    #[test]
    fn account_urls_from_key_and_from_token() -> Result<()> {
        let key = AccountKey::new("acct", &Secret::new(DEV_KEY))?;
        let a = StorageAccount::new("acct", "core.windows.net", StorageCredential::Key(key))?;
        let c = a.container_url("data", &options())?;
        assert!(c
            .expose()
            .starts_with("https://acct.blob.core.windows.net/data?sv=2022-11-02&"));
        assert_eq!(
            c.to_string(),
            "https://acct.blob.core.windows.net/data?<redacted>"
        );
        let b = a.blob_url("data", "dir/a b.txt", &options())?;
        assert!(b
            .expose()
            .starts_with("https://acct.blob.core.windows.net/data/dir/a%20b.txt?"));
        assert!(b.expose().contains("&sr=b&"));

        let t = SasToken::parse("?sv=2022-11-02&ss=b&sig=xyz")?;
        let a = StorageAccount::with_endpoint(
            "devstoreaccount1",
            "http://127.0.0.1:10000/devstoreaccount1",
            StorageCredential::Sas(t),
        )?;
        assert_eq!(
            a.container_url("data", &options())?.expose(),
            "http://127.0.0.1:10000/devstoreaccount1/data?sv=2022-11-02&ss=b&sig=xyz"
        );
        assert!(SasToken::parse("sv=1&se=2").is_err());
        Ok(())
    }
}
