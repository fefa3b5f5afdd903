//! A Blob service REST client over SAS URLs: List Blobs, Get Blob, Put Blob, Put Block and Put
//! Block List, Create Container; retries on 5xx, 408, 429 and transport failures.

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use futures::StreamExt as _;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use url::Url;

use crate::error::{Result, StorageError};
use crate::location::SasUrl;
use crate::sas::STORAGE_VERSION;

/// Tuning of a [`BlobClient`].
#[derive(Debug, Clone)]
pub struct BlobClientOptions {
    /// Attempts per request, the first included (5xx, 408, 429 and transport errors retry).
    pub max_attempts: u32,
    /// The wait before the first retry; doubled at each further one.
    pub initial_backoff: Duration,
    /// Timeout of one request, body included.
    pub request_timeout: Duration,
    /// Files larger than this are uploaded as blocks (Put Block + Put Block List).
    pub block_upload_threshold: u64,
    /// The size of each block of a block upload.
    pub block_size: u64,
}

impl Default for BlobClientOptions {
    fn default() -> Self {
        BlobClientOptions {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(200),
            request_timeout: Duration::from_secs(300),
            block_upload_threshold: 64 * 1024 * 1024,
            block_size: 8 * 1024 * 1024,
        }
    }
}

/// One blob of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobItem {
    /// The blob name.
    pub name: String,
    /// Its size in bytes (`Content-Length`).
    pub size: u64,
}

/// One page of List Blobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobPage {
    /// The blobs of this page, in the service's (lexicographic) order.
    pub blobs: Vec<BlobItem>,
    /// The marker of the next page, `None` on the last one.
    pub next_marker: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct EnumerationResults {
    #[serde(default)]
    blobs: Blobs,
    #[serde(default)]
    next_marker: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct Blobs {
    #[serde(default)]
    blob: Vec<XmlBlob>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct XmlBlob {
    name: String,
    properties: XmlProperties,
}

#[derive(Deserialize)]
struct XmlProperties {
    #[serde(rename = "Content-Length")]
    content_length: u64,
}

/// Parses a List Blobs response body.
fn parse_listing(xml: &str) -> std::result::Result<BlobPage, quick_xml::DeError> {
    let r: EnumerationResults = quick_xml::de::from_str(xml)?;
    Ok(BlobPage {
        blobs: r
            .blobs
            .blob
            .into_iter()
            .map(|b| BlobItem {
                name: b.name,
                size: b.properties.content_length,
            })
            .collect(),
        next_marker: r.next_marker.filter(|m| !m.is_empty()),
    })
}

/// The body of one attempt; rebuilt for each retry.
enum Body<'a> {
    Empty,
    Bytes(bytes::Bytes),
    File(&'a Path, u64),
}

/// A Blob service client. Every URL it takes carries its own authorization (a SAS).
#[derive(Debug, Clone)]
pub struct BlobClient {
    http: reqwest::Client,
    options: BlobClientOptions,
}

fn retryable(status: StatusCode) -> bool {
    status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
}

fn first_line(s: &str) -> Option<String> {
    let line = s.lines().map(str::trim).find(|l| !l.is_empty())?;
    Some(line.chars().take(300).collect())
}

/// The `<Code>` and `<Message>` of an error body.
fn error_detail(body: &str) -> (Option<String>, Option<String>) {
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct XmlError {
        code: Option<String>,
        message: Option<String>,
    }
    match quick_xml::de::from_str::<XmlError>(body) {
        Ok(e) => (e.code, e.message.as_deref().and_then(first_line)),
        Err(_) => (None, first_line(body)),
    }
}

impl BlobClient {
    /// A client with default options.
    pub fn new() -> Result<BlobClient> {
        BlobClient::with_options(BlobClientOptions::default())
    }

    /// A client with `options`.
    pub fn with_options(options: BlobClientOptions) -> Result<BlobClient> {
        let http = reqwest::Client::builder()
            .timeout(options.request_timeout)
            .connect_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| StorageError::Transport {
                method: "BUILD",
                url: String::new(),
                source: e.without_url(),
            })?;
        Ok(BlobClient { http, options })
    }

    /// The options in force.
    pub fn options(&self) -> &BlobClientOptions {
        &self.options
    }

    /// Sends one request with retries; returns the successful response.
    async fn send(
        &self,
        method: Method,
        url: &Url,
        headers: &HeaderMap,
        body: Body<'_>,
    ) -> Result<reqwest::Response> {
        let method_str: &'static str = match method {
            Method::GET => "GET",
            Method::PUT => "PUT",
            Method::HEAD => "HEAD",
            Method::DELETE => "DELETE",
            _ => "POST",
        };
        let redacted = shipyard_batch_api::models::url_for_log(url.as_str());
        let mut backoff = self.options.initial_backoff;
        let mut attempt = 1;
        loop {
            let mut req = self
                .http
                .request(method.clone(), url.clone())
                .header("x-ms-version", STORAGE_VERSION)
                .headers(headers.clone());
            req = match &body {
                Body::Empty => req.header(reqwest::header::CONTENT_LENGTH, 0),
                Body::Bytes(b) => req.body(b.clone()),
                Body::File(path, len) => {
                    let file = tokio::fs::File::open(path)
                        .await
                        .map_err(|e| StorageError::io("opening", *path, e))?;
                    let stream = tokio_util::io::ReaderStream::new(file);
                    req.header(reqwest::header::CONTENT_LENGTH, *len)
                        .body(reqwest::Body::wrap_stream(stream))
                }
            };
            let outcome = req.send().await;
            let last = attempt >= self.options.max_attempts.max(1);
            match outcome {
                Ok(resp) if resp.status().is_success() => return Ok(resp),
                Ok(resp) if retryable(resp.status()) && !last => {
                    tracing::debug!(method = method_str, url = %redacted, status = resp.status().as_u16(), attempt, "retrying");
                }
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let header_code = resp
                        .headers()
                        .get("x-ms-error-code")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    let text = resp.text().await.unwrap_or_default();
                    let (code, message) = error_detail(&text);
                    return Err(StorageError::Http {
                        method: method_str,
                        url: redacted,
                        status,
                        code: header_code.or(code),
                        message,
                    });
                }
                Err(e) if !last && (e.is_timeout() || e.is_connect() || e.is_request()) => {
                    tracing::debug!(method = method_str, url = %redacted, error = %e.without_url(), attempt, "retrying");
                }
                Err(e) => {
                    return Err(StorageError::Transport {
                        method: method_str,
                        url: redacted,
                        source: e.without_url(),
                    })
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = backoff.saturating_mul(2);
            attempt += 1;
        }
    }

    /// GET of `url` (a query added to `base`), its body as text.
    async fn get_text(&self, url: &Url, base: &SasUrl) -> Result<String> {
        let resp = self
            .send(Method::GET, url, &HeaderMap::new(), Body::Empty)
            .await?;
        resp.text().await.map_err(|e| StorageError::Transport {
            method: "GET",
            url: base.redacted(),
            source: e.without_url(),
        })
    }

    /// Create Container at `container_url`. The SAS must allow it (an account SAS with `c`);
    /// an existing container is not an error.
    pub async fn create_container(&self, container_url: &SasUrl) -> Result<()> {
        let url = container_url.with_query(&[("restype", "container")]);
        match self
            .send(Method::PUT, &url, &HeaderMap::new(), Body::Empty)
            .await
        {
            Ok(_) => Ok(()),
            Err(StorageError::Http { status: 409, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// One page of List Blobs: names starting with `prefix`, from `marker`, at most
    /// `max_results` (the service's limit, 5000, when `None`).
    pub async fn list_blobs_page(
        &self,
        container_url: &SasUrl,
        prefix: Option<&str>,
        marker: Option<&str>,
        max_results: Option<u32>,
    ) -> Result<BlobPage> {
        let max = max_results.map(|m| m.to_string());
        let mut pairs = vec![("restype", "container"), ("comp", "list")];
        if let Some(p) = prefix.filter(|p| !p.is_empty()) {
            pairs.push(("prefix", p));
        }
        if let Some(m) = marker {
            pairs.push(("marker", m));
        }
        if let Some(m) = &max {
            pairs.push(("maxresults", m));
        }
        let text = self
            .get_text(&container_url.with_query(&pairs), container_url)
            .await?;
        parse_listing(&text).map_err(|e| StorageError::InvalidListing {
            url: container_url.redacted(),
            reason: e.to_string(),
        })
    }

    /// Every blob whose name starts with `prefix`, following markers page by page.
    pub async fn list_blobs(
        &self,
        container_url: &SasUrl,
        prefix: Option<&str>,
        page_size: Option<u32>,
    ) -> Result<Vec<BlobItem>> {
        let mut all = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let page = self
                .list_blobs_page(container_url, prefix, marker.as_deref(), page_size)
                .await?;
            all.extend(page.blobs);
            match page.next_marker {
                Some(m) => marker = Some(m),
                None => return Ok(all),
            }
        }
    }

    /// Get Blob (or any HTTP GET) streamed into `dest`, through a temporary file beside it that
    /// is renamed at the end. Parent directories are created. Returns the bytes written.
    pub async fn download_to_file(&self, url: &SasUrl, dest: &Path) -> Result<u64> {
        if let Some(parent) = dest.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| StorageError::io("creating directory", parent, e))?;
        }
        let mut tmp_name = dest.file_name().unwrap_or_default().to_os_string();
        tmp_name.push(format!(".shipyard-part-{}", std::process::id()));
        let tmp = dest.with_file_name(tmp_name);
        // `send` retries the request; a body that breaks off mid-stream restarts the download.
        let mut written = self.download_once(url, &tmp).await;
        let mut attempt = 1;
        while matches!(written, Err(StorageError::Transport { .. }))
            && attempt < self.options.max_attempts
        {
            attempt += 1;
            tokio::time::sleep(self.options.initial_backoff).await;
            written = self.download_once(url, &tmp).await;
        }
        match written {
            Ok(n) => {
                tokio::fs::rename(&tmp, dest)
                    .await
                    .map_err(|e| StorageError::io("renaming into", dest, e))?;
                Ok(n)
            }
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                Err(e)
            }
        }
    }

    async fn download_once(&self, url: &SasUrl, tmp: &Path) -> Result<u64> {
        let resp = self
            .send(Method::GET, url.url(), &HeaderMap::new(), Body::Empty)
            .await?;
        let mut file = tokio::fs::File::create(tmp)
            .await
            .map_err(|e| StorageError::io("creating", tmp, e))?;
        let mut stream = resp.bytes_stream();
        let mut n = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| StorageError::Transport {
                method: "GET",
                url: url.redacted(),
                source: e.without_url(),
            })?;
            file.write_all(&chunk)
                .await
                .map_err(|e| StorageError::io("writing", tmp, e))?;
            n += chunk.len() as u64;
        }
        file.flush()
            .await
            .map_err(|e| StorageError::io("writing", tmp, e))?;
        Ok(n)
    }

    /// Uploads `file` to the block blob at `blob_url`: one Put Blob up to the block threshold,
    /// else Put Block per block and Put Block List. `headers` (e.g. `x-ms-blob-content-type`)
    /// go on the request that creates the blob. Returns the bytes uploaded.
    pub async fn upload_file(
        &self,
        blob_url: &SasUrl,
        file: &Path,
        headers: &[(String, String)],
    ) -> Result<u64> {
        let len = tokio::fs::metadata(file)
            .await
            .map_err(|e| StorageError::io("reading", file, e))?
            .len();
        let mut extra = HeaderMap::new();
        for (name, value) in headers {
            let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) else {
                return Err(StorageError::InvalidUrl {
                    url: blob_url.redacted(),
                    reason: format!("upload header {name} is not a valid HTTP header"),
                });
            };
            extra.insert(n, v);
        }
        if len <= self.options.block_upload_threshold {
            extra.insert("x-ms-blob-type", HeaderValue::from_static("BlockBlob"));
            self.send(Method::PUT, blob_url.url(), &extra, Body::File(file, len))
                .await?;
            return Ok(len);
        }
        let ids = self.put_blocks(blob_url, file).await?;
        let mut xml = String::from("<?xml version=\"1.0\" encoding=\"utf-8\"?><BlockList>");
        for id in &ids {
            xml.push_str("<Latest>");
            xml.push_str(id);
            xml.push_str("</Latest>");
        }
        xml.push_str("</BlockList>");
        let url = blob_url.with_query(&[("comp", "blocklist")]);
        self.send(Method::PUT, &url, &extra, Body::Bytes(xml.into()))
            .await?;
        Ok(len)
    }

    /// Get Block List: the ids of the committed blocks of a block blob (empty for a blob
    /// written by one Put Blob).
    pub async fn committed_blocks(&self, blob_url: &SasUrl) -> Result<Vec<String>> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct BlockList {
            #[serde(default)]
            committed_blocks: Blocks,
        }
        #[derive(Deserialize, Default)]
        #[serde(rename_all = "PascalCase")]
        struct Blocks {
            #[serde(default)]
            block: Vec<Block>,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Block {
            name: String,
        }
        let url = blob_url.with_query(&[("comp", "blocklist"), ("blocklisttype", "committed")]);
        let text = self.get_text(&url, blob_url).await?;
        let list: BlockList =
            quick_xml::de::from_str(&text).map_err(|e| StorageError::InvalidListing {
                url: blob_url.redacted(),
                reason: e.to_string(),
            })?;
        Ok(list
            .committed_blocks
            .block
            .into_iter()
            .map(|b| b.name)
            .collect())
    }

    async fn put_blocks(&self, blob_url: &SasUrl, file: &Path) -> Result<Vec<String>> {
        let block = usize::try_from(self.options.block_size.max(1)).unwrap_or(usize::MAX);
        let mut f = tokio::fs::File::open(file)
            .await
            .map_err(|e| StorageError::io("opening", file, e))?;
        let mut ids = Vec::new();
        loop {
            let mut buf = Vec::with_capacity(block);
            let n = (&mut f)
                .take(block as u64)
                .read_to_end(&mut buf)
                .await
                .map_err(|e| StorageError::io("reading", file, e))?;
            if n == 0 {
                return Ok(ids);
            }
            // Block ids are base64 of equal-length strings, as the service requires.
            let id = base64::engine::general_purpose::STANDARD
                .encode(format!("shipyard-block-{:08}", ids.len()));
            let url = blob_url.with_query(&[("comp", "block"), ("blockid", &id)]);
            self.send(
                Method::PUT,
                &url,
                &HeaderMap::new(),
                Body::Bytes(buf.into()),
            )
            .await?;
            ids.push(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_listing_page() -> std::result::Result<(), quick_xml::DeError> {
        let xml = r#"<?xml version="1.0" encoding="utf-8"?>
<EnumerationResults ServiceEndpoint="http://127.0.0.1/devstoreaccount1/" ContainerName="c">
  <Prefix>in/</Prefix><MaxResults>2</MaxResults>
  <Blobs>
    <Blob><Name>in/a.txt</Name><Properties><Content-Length>3</Content-Length><BlobType>BlockBlob</BlobType></Properties></Blob>
    <Blob><Name>in/b &amp; c.txt</Name><Properties><Content-Length>0</Content-Length></Properties></Blob>
  </Blobs>
  <NextMarker>m2</NextMarker>
</EnumerationResults>"#;
        let page = parse_listing(xml)?;
        assert_eq!(
            page.blobs,
            vec![
                BlobItem {
                    name: "in/a.txt".into(),
                    size: 3
                },
                BlobItem {
                    name: "in/b & c.txt".into(),
                    size: 0
                },
            ]
        );
        assert_eq!(page.next_marker.as_deref(), Some("m2"));
        let last =
            parse_listing("<EnumerationResults><Blobs /><NextMarker /></EnumerationResults>")?;
        assert!(last.blobs.is_empty());
        assert_eq!(last.next_marker, None);
        Ok(())
    }

    #[test]
    fn error_detail_reads_code_and_first_message_line() {
        let (code, msg) = error_detail(
            "<?xml version=\"1.0\"?><Error><Code>AuthorizationPermissionMismatch</Code>\
             <Message>This request is not authorized.\nRequestId:1</Message></Error>",
        );
        assert_eq!(code.as_deref(), Some("AuthorizationPermissionMismatch"));
        assert_eq!(msg.as_deref(), Some("This request is not authorized."));
    }
}
