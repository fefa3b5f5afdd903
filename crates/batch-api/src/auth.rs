//! Credentials: Shared Key signing and Microsoft Entra ID bearer tokens.
//!
//! Secrets live in [`Secret`], whose `Debug` prints `<redacted>`; no type here ever prints a
//! key or token.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use reqwest::header::HeaderMap;
use sha2::Sha256;

use crate::error::{BatchError, Result};
pub use shipyard_batch_models::Secret;

/// A decoded account key (Azure Batch or Storage), which signs Shared Key requests and SAS
/// tokens. `Debug` prints `<redacted>`.
#[derive(Clone)]
pub struct SigningKey(Arc<Vec<u8>>);

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl SigningKey {
    /// Decodes a base64 key as the portal shows it (surrounding white space ignored); the
    /// error says why it is not base64 and never holds the key.
    pub fn from_base64(key: &str) -> std::result::Result<SigningKey, String> {
        base64::engine::general_purpose::STANDARD
            .decode(key.trim())
            .map(|k| SigningKey(Arc::new(k)))
            .map_err(|e| e.to_string())
    }

    /// The signature of `string_to_sign`: HMAC-SHA256 with the key, base64.
    pub fn sign(&self, string_to_sign: &str) -> String {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = match Hmac::<Sha256>::new_from_slice(&self.0) {
            Ok(m) => m,
            Err(_) => unreachable!("HMAC-SHA256 takes keys of any length"),
        };
        mac.update(string_to_sign.as_bytes());
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    }
}

/// Shared Key credential: the Batch account name and its base64 access key (`Debug` redacts
/// the key).
#[derive(Clone, Debug)]
pub struct SharedKeyCredential {
    account: String,
    key: SigningKey,
}

/// The headers, in order, whose values form the fixed lines of the Shared Key string-to-sign.
const SIGNED_STANDARD_HEADERS: [&str; 11] = [
    "content-encoding",
    "content-language",
    "content-length",
    "content-md5",
    "content-type",
    "date",
    "if-modified-since",
    "if-match",
    "if-none-match",
    "if-unmodified-since",
    "range",
];

impl SharedKeyCredential {
    /// Builds a credential from the account name and the base64 key shown in the portal.
    pub fn new(account: impl Into<String>, base64_key: &str) -> Result<Self> {
        let account = account.into();
        if account.is_empty() {
            return Err(BatchError::Config {
                field: "account".into(),
                message: "account name is empty".into(),
            });
        }
        let key = SigningKey::from_base64(base64_key).map_err(|e| BatchError::Config {
            field: "key".into(),
            message: format!("account key is not valid base64 ({e})"),
        })?;
        Ok(SharedKeyCredential { account, key })
    }

    /// The account name.
    pub fn account(&self) -> &str {
        &self.account
    }

    /// Builds the Shared Key string-to-sign for a request.
    ///
    /// `headers` must already hold every header that will be sent (including `ocp-date` and,
    /// for requests with a body, `content-type` and `content-length`). A request other than
    /// GET/HEAD without `content-length` is signed with `0` there, as the Python SDK's
    /// `BatchSharedKeyAuthPolicy` does.
    pub fn string_to_sign(&self, method: &str, url: &url::Url, headers: &HeaderMap) -> String {
        let mut s = String::with_capacity(256);
        s.push_str(&method.to_ascii_uppercase());
        s.push('\n');
        // As the SDKs sign: a request other than GET/HEAD without a Content-Length header
        // signs it as "0" (and the client sends `Content-Length: 0` on the wire).
        let bodiless_write = !matches!(s.as_str(), "GET\n" | "HEAD\n");
        for name in SIGNED_STANDARD_HEADERS {
            match headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.is_empty())
            {
                Some(v) => s.push_str(v),
                None if name == "content-length" && bodiless_write => s.push('0'),
                None => {}
            }
            s.push('\n');
        }
        // CanonicalizedHeaders: ocp-* headers, lowercase names, sorted.
        let mut ocp: Vec<(String, &str)> = headers
            .iter()
            .filter_map(|(n, v)| {
                let name = n.as_str().to_ascii_lowercase();
                let value = v.to_str().ok()?;
                (name.starts_with("ocp-") && !value.is_empty()).then_some((name, value))
            })
            .collect();
        ocp.sort();
        for (n, v) in ocp {
            s.push_str(&n);
            s.push(':');
            s.push_str(v.trim());
            s.push('\n');
        }
        // CanonicalizedResource.
        s.push('/');
        s.push_str(&self.account);
        s.push_str(url.path());
        let mut query: Vec<(String, String)> = url
            .query_pairs()
            .filter(|(_, v)| !v.is_empty())
            .map(|(n, v)| (n.to_ascii_lowercase(), v.into_owned()))
            .collect();
        query.sort();
        for (n, v) in query {
            s.push('\n');
            s.push_str(&n);
            s.push(':');
            s.push_str(&v);
        }
        s
    }

    /// Computes the `Authorization` header value for a request.
    pub fn authorization(&self, method: &str, url: &url::Url, headers: &HeaderMap) -> String {
        let sig = self.key.sign(&self.string_to_sign(method, url, headers));
        format!("SharedKey {}:{}", self.account, sig)
    }
}

/// An OAuth2 access token and its expiry.
#[derive(Clone, Debug)]
pub struct AccessToken {
    /// The bearer token (redacted in `Debug`).
    pub token: Secret,
    /// When the token stops being valid.
    pub expires_at: Instant,
}

/// Boxed future returned by [`TokenSource::token`].
pub type TokenFuture<'a> = Pin<Box<dyn Future<Output = Result<AccessToken>> + Send + 'a>>;

/// Something that hands out Microsoft Entra ID access tokens for the Batch resource
/// (`https://batch.core.windows.net//.default`).
///
/// Implementations cache as they see fit; [`ClientSecretCredential`] caches and refreshes
/// before expiry. Managed identity or an `az account get-access-token` source can implement it.
pub trait TokenSource: Send + Sync + fmt::Debug {
    /// A token valid for at least the next few seconds.
    fn token(&self) -> TokenFuture<'_>;

    /// Forgets any cached token (called once when the service answers 401 to a token).
    fn invalidate(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async {})
    }
}

/// The Entra ID scope for Azure Batch.
pub const BATCH_SCOPE: &str = "https://batch.core.windows.net//.default";

/// The public-cloud Entra ID authority.
pub const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com";

/// Client-credentials (service principal + secret) token source with caching.
pub struct ClientSecretCredential {
    token_url: url::Url,
    client_id: String,
    secret: Secret,
    scope: String,
    refresh_before: Duration,
    http: reqwest::Client,
    cache: tokio::sync::Mutex<Option<AccessToken>>,
}

impl fmt::Debug for ClientSecretCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientSecretCredential")
            .field("token_url", &self.token_url.as_str())
            .field("client_id", &self.client_id)
            .field("secret", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl ClientSecretCredential {
    /// A credential for `tenant` at the public authority.
    pub fn new(
        tenant: &str,
        client_id: impl Into<String>,
        secret: impl Into<Secret>,
    ) -> Result<Self> {
        Self::with_authority(DEFAULT_AUTHORITY, tenant, client_id, secret)
    }

    /// A credential at a custom authority (sovereign clouds, or a local test server):
    /// tokens come from `{authority}/{tenant}/oauth2/v2.0/token`.
    pub fn with_authority(
        authority: &str,
        tenant: &str,
        client_id: impl Into<String>,
        secret: impl Into<Secret>,
    ) -> Result<Self> {
        if tenant.is_empty() || tenant.contains(['/', '?', '#', '%', ' ']) {
            return Err(BatchError::Config {
                field: "tenant".into(),
                message: format!("`{tenant}` is not a tenant id or domain"),
            });
        }
        let base = authority.trim_end_matches('/');
        let token_url =
            url::Url::parse(&format!("{base}/{tenant}/oauth2/v2.0/token")).map_err(|e| {
                BatchError::Config {
                    field: "authority".into(),
                    message: format!("`{authority}` with tenant `{tenant}` is not a URL ({e})"),
                }
            })?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| BatchError::Config {
                field: "http client".into(),
                message: e.to_string(),
            })?;
        Ok(ClientSecretCredential {
            token_url,
            client_id: client_id.into(),
            secret: secret.into(),
            scope: BATCH_SCOPE.to_owned(),
            refresh_before: Duration::from_secs(300),
            http,
            cache: tokio::sync::Mutex::new(None),
        })
    }

    /// Refresh the cached token this long before it expires (default 5 minutes).
    pub fn refresh_before(mut self, margin: Duration) -> Self {
        self.refresh_before = margin;
        self
    }

    /// Overrides the requested scope (default [`BATCH_SCOPE`]).
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = scope.into();
        self
    }

    async fn fetch(&self) -> Result<AccessToken> {
        let endpoint = self.token_url.to_string();
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", self.client_id.as_str()),
            ("client_secret", self.secret.expose()),
            ("scope", self.scope.as_str()),
        ];
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let started = Instant::now();
        let resp = self
            .http
            .post(self.token_url.clone())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .map_err(|e| BatchError::Token {
                endpoint: endpoint.clone(),
                message: e.without_url().to_string(),
            })?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| BatchError::Token {
            endpoint: endpoint.clone(),
            message: e.without_url().to_string(),
        })?;
        #[derive(serde::Deserialize)]
        struct TokenReply {
            access_token: String,
            expires_in: serde_json::Value,
        }
        #[derive(serde::Deserialize)]
        struct TokenFailure {
            error: Option<String>,
            error_description: Option<String>,
        }
        if !status.is_success() {
            let why = serde_json::from_str::<TokenFailure>(&text)
                .map(|f| {
                    format!(
                        "{} {}",
                        f.error.unwrap_or_default(),
                        f.error_description.unwrap_or_default()
                    )
                })
                .unwrap_or_else(|_| "unreadable error body".into());
            return Err(BatchError::Token {
                endpoint,
                message: format!("HTTP {}: {}", status.as_u16(), why.trim()),
            });
        }
        let reply: TokenReply = serde_json::from_str(&text).map_err(|e| BatchError::Token {
            endpoint: endpoint.clone(),
            message: format!("unexpected token response ({e})"),
        })?;
        // expires_in is a number, or a string of digits on some endpoints.
        let secs = match &reply.expires_in {
            serde_json::Value::Number(n) => n.as_u64(),
            serde_json::Value::String(s) => s.parse().ok(),
            _ => None,
        }
        .ok_or_else(|| BatchError::Token {
            endpoint: endpoint.clone(),
            message: "token response has no numeric `expires_in`".into(),
        })?;
        tracing::debug!(expires_in = secs, "fetched Entra ID token");
        Ok(AccessToken {
            token: Secret::new(reply.access_token),
            expires_at: started + Duration::from_secs(secs),
        })
    }
}

impl TokenSource for ClientSecretCredential {
    fn invalidate(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            *self.cache.lock().await = None;
        })
    }

    fn token(&self) -> TokenFuture<'_> {
        Box::pin(async move {
            let mut cache = self.cache.lock().await;
            if let Some(t) = cache.as_ref() {
                if Instant::now() + self.refresh_before < t.expires_at {
                    return Ok(t.clone());
                }
            }
            let fresh = self.fetch().await?;
            *cache = Some(fresh.clone());
            Ok(fresh)
        })
    }
}

/// How a [`crate::BatchClient`] authenticates.
#[derive(Clone, Debug)]
pub enum Credential {
    /// Shared Key signing with the account key.
    SharedKey(SharedKeyCredential),
    /// `Authorization: Bearer` from a token source.
    Token(Arc<dyn TokenSource>),
}

impl From<SharedKeyCredential> for Credential {
    fn from(value: SharedKeyCredential) -> Self {
        Credential::SharedKey(value)
    }
}

impl From<ClientSecretCredential> for Credential {
    fn from(value: ClientSecretCredential) -> Self {
        Credential::Token(Arc::new(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn string_to_sign_layout() {
        let cred = SharedKeyCredential::new("acct", "a2V5").expect("valid key");
        let url = url::Url::parse(
            "https://acct.westus.batch.azure.com/jobs/j1/tasks?timeout=30&api-version=2024-07-01.20.0&%24filter=state%20eq%20%27active%27",
        )
        .expect("url");
        let mut h = HeaderMap::new();
        h.insert(
            "ocp-date",
            HeaderValue::from_static("Tue, 24 Nov 2026 03:00:00 GMT"),
        );
        h.insert(
            "content-type",
            HeaderValue::from_static("application/json; odata=minimalmetadata"),
        );
        h.insert("content-length", HeaderValue::from_static("12"));
        h.insert("client-request-id", HeaderValue::from_static("x"));
        let s = cred.string_to_sign("post", &url, &h);
        assert_eq!(
            s,
            "POST\n\n\n12\n\napplication/json; odata=minimalmetadata\n\n\n\n\n\n\n\
             ocp-date:Tue, 24 Nov 2026 03:00:00 GMT\n\
             /acct/jobs/j1/tasks\n$filter:state eq 'active'\napi-version:2024-07-01.20.0\ntimeout:30"
        );
    }

    /// Vectors written from the Python SDK's documented Shared Key algorithm
    /// (`azure-batch` `BatchSharedKeyAuthPolicy`): method line; the eleven standard headers,
    /// with `content-length` "0" for any method but GET/HEAD that has none; `ocp-*` headers
    /// lowercased and sorted; `/account` + the still-encoded path; decoded query parameters
    /// with a value, sorted. Signatures were computed with Python's `hmac`/`hashlib` over the
    /// expected string with the key bytes 0..32.
    #[test]
    fn string_to_sign_matches_sdk_vectors() {
        const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
        const D: &str = "Tue, 01 Dec 2026 09:00:00 GMT";
        const B: &str = "https://acct.westeurope.batch.azure.com";
        const V: &str = "api-version:2024-07-01.20.0";
        type Vector<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], String, &'a str);
        let vectors: Vec<Vector<'_>> = vec![
            (
                "DELETE",
                "/pools/p1?api-version=2024-07-01.20.0&timeout=30",
                &[("ocp-date", D)],
                format!("DELETE\n\n\n0\n\n\n\n\n\n\n\n\nocp-date:{D}\n/acct/pools/p1\n{V}\ntimeout:30"),
                "vAkOKmk35W+G6YWSV9UrYKVEPn/qm0Re3T7R7iIhtCk=",
            ),
            (
                "DELETE",
                "/jobs/j%201?api-version=2024-07-01.20.0",
                &[("ocp-date", D), ("content-length", "0")],
                format!("DELETE\n\n\n0\n\n\n\n\n\n\n\n\nocp-date:{D}\n/acct/jobs/j%201\n{V}"),
                "M2MiPmiRWDHJKeAJIei7bTzofkQOgG/o9knLBJUcM+k=",
            ),
            (
                "POST",
                "/jobs/j1/terminate?api-version=2024-07-01.20.0",
                &[("ocp-date", D)],
                format!("POST\n\n\n0\n\n\n\n\n\n\n\n\nocp-date:{D}\n/acct/jobs/j1/terminate\n{V}"),
                "vFCYYLq4VZUavllEauYGcr9w3RFi4VKl9oI6vFRvBCA=",
            ),
            (
                "GET",
                "/pools?api-version=2024-07-01.20.0&%24filter=state%20eq%20%27active%27&maxresults=",
                &[("ocp-date", D)],
                format!("GET\n\n\n\n\n\n\n\n\n\n\n\nocp-date:{D}\n/acct/pools\n$filter:state eq 'active'\n{V}"),
                "p1SgSs/v3UwQQSsnvY5lPL6WceNziGFzIE6UxaYdHtM=",
            ),
            (
                "HEAD",
                "/jobs/j1/tasks/t1/files/stdout.txt?api-version=2024-07-01.20.0",
                &[("ocp-date", D)],
                format!("HEAD\n\n\n\n\n\n\n\n\n\n\n\nocp-date:{D}\n/acct/jobs/j1/tasks/t1/files/stdout.txt\n{V}"),
                "Tlgw1E7ExJNxjnX7tipAQ0vvmTmpmaV4JJUEZ4rWFpc=",
            ),
            (
                "GET",
                "/jobs/j1/tasks/t1/files/out.bin?api-version=2024-07-01.20.0",
                &[("ocp-range", "bytes=100-199"), ("ocp-date", D), ("If-Match", "\"0x8D\"")],
                format!("GET\n\n\n\n\n\n\n\n\"0x8D\"\n\n\n\nocp-date:{D}\nocp-range:bytes=100-199\n/acct/jobs/j1/tasks/t1/files/out.bin\n{V}"),
                "6GnH+h589VVz8AsPs/2ERImypfFD8zf3xxOhZIvw9as=",
            ),
            (
                "PUT",
                "/jobs/j1?api-version=2024-07-01.20.0",
                &[
                    ("ocp-date", D),
                    ("content-type", "application/json; odata=minimalmetadata"),
                    ("content-length", "27"),
                ],
                format!("PUT\n\n\n27\n\napplication/json; odata=minimalmetadata\n\n\n\n\n\n\nocp-date:{D}\n/acct/jobs/j1\n{V}"),
                "Wj1gLsnW7dDX05kWjeU+dYRJcwQKMBOSAXDAKm/nlaA=",
            ),
        ];
        let cred = SharedKeyCredential::new("acct", KEY).expect("valid key");
        for (method, path, hs, want, sig) in vectors {
            let url = url::Url::parse(&format!("{B}{path}")).expect("url");
            let mut h = HeaderMap::new();
            for (n, v) in hs {
                h.insert(
                    reqwest::header::HeaderName::from_bytes(n.as_bytes()).expect("name"),
                    HeaderValue::from_str(v).expect("value"),
                );
            }
            assert_eq!(
                cred.string_to_sign(method, &url, &h),
                want,
                "{method} {path}"
            );
            assert_eq!(
                cred.authorization(method, &url, &h),
                format!("SharedKey acct:{sig}"),
                "{method} {path}"
            );
        }
    }

    #[test]
    fn debug_redacts() {
        let cred = SharedKeyCredential::new("acct", "c2VjcmV0a2V5").expect("valid key");
        let dbg = format!("{cred:?}");
        assert!(!dbg.contains("c2VjcmV0a2V5") && dbg.contains("redacted"));
        let c = ClientSecretCredential::with_authority("http://127.0.0.1:1", "t", "id", "hunter2")
            .expect("cred");
        assert!(!format!("{c:?}").contains("hunter2"));
        assert_eq!(format!("{:?}", Secret::new("tok")), "<redacted>");
    }

    #[test]
    fn tenant_cannot_reshape_the_token_url() {
        for tenant in ["", "t/../evil", "t?x=1", "t#f", "a b"] {
            let e = ClientSecretCredential::new(tenant, "id", "s").expect_err(tenant);
            assert!(e.to_string().contains("`tenant`"), "{tenant}: {e}");
        }
        let ok = ClientSecretCredential::new("contoso.onmicrosoft.com", "id", "s").expect("ok");
        assert_eq!(
            ok.token_url.as_str(),
            "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
        );
    }

    #[test]
    fn bad_key_is_config_error() {
        let e = SharedKeyCredential::new("acct", "not base64!").expect_err("bad key");
        assert!(e.to_string().contains("`key`"));
    }
}
