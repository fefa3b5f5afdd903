//! `shipyard serve`: the Azure Batch data-plane REST API on this machine.
//!
//! [`Server::bind`] serves api-versions `2024-07-01.20.0` and `2025-06-01.21.0` (also spelled
//! `2025-06-01`, as the azure-batch 15.1.0 Python SDK sends it) over plain HTTP, authenticated
//! with Shared Key exactly as the service verifies it, every request body validated strictly
//! against the spec of its api-version, and answers with the service's error codes. State and
//! execution come from a [`Backend`]: [`memory::MemoryBackend`] for tests, the local engine
//! (feature `engine`) for real work.
//!
//! Protocol details the server adds on top of the backend:
//! - OData `$expand=stats` on `Pool_Get`/`Pool_List`, `Job_Get`/`Job_List` and
//!   `Task_Get`/`Task_List`: `stats` is in an answer only when expanded, computed from the
//!   objects' times and tasks (CPU and I/O figures are not measured here and read zero); any
//!   other `$expand` value is 400 `InvalidQueryParameterValue` naming `$expand`.
//! - Body properties only api-version 2025-06-01 has (found by validating the body against
//!   the 2024-07-01 definition the backend's models follow) are kept beside the objects and
//!   returned under 2025-06-01; with the engine they are persisted under its state directory.
//! - Enum values that differ from the spec's only in case are accepted (as the service
//!   accepts them) and stored in the spec's spelling.
//!
//! ```no_run
//! # async fn demo() -> Result<(), shipyard_serve::ServeError> {
//! use shipyard_serve::{memory::MemoryBackend, ServeOptions, Server};
//! let opts = ServeOptions::new("local", "c2VjcmV0LWtleQ==");
//! let server = Server::bind(opts, MemoryBackend::new("/tmp/serve")).await?;
//! println!("Batch endpoint: http://{}", server.addr());
//! server.shutdown().await;
//! # Ok(()) }
//! ```

pub mod backend;
#[cfg(feature = "engine")]
pub mod engine;
mod expand;
mod extras;
mod http;
pub mod memory;
mod routes;

use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine as _;

pub use backend::{Backend, BackendError, BackendResult, BoxFuture, FileContent};

/// The address `shipyard serve` listens on by default (loopback).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8711";

/// The file under a state directory holding the 2025-only properties of its objects.
const EXTRAS_FILE: &str = "serve-2025-properties.json";

/// How to serve.
#[derive(Clone)]
pub struct ServeOptions {
    /// Where to listen (default [`DEFAULT_LISTEN`]; port 0 picks a free one).
    pub listen: SocketAddr,
    /// Batch account name the Shared Key signatures must name.
    pub account: String,
    /// Base64 account key.
    pub key: String,
    /// Base URL written into `url`, `odata.nextLink` and `Location` (default `http://{addr}`).
    pub public_url: Option<String>,
}

impl std::fmt::Debug for ServeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeOptions")
            .field("listen", &self.listen)
            .field("account", &self.account)
            .field("key", &"<redacted>")
            .field("public_url", &self.public_url)
            .finish()
    }
}

impl ServeOptions {
    /// Options for `account` with a base64 `key`, listening on [`DEFAULT_LISTEN`].
    pub fn new(account: impl Into<String>, key: impl Into<String>) -> ServeOptions {
        ServeOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 8711)),
            account: account.into(),
            key: key.into(),
            public_url: None,
        }
    }

    /// Sets the listen address.
    pub fn listen(mut self, addr: SocketAddr) -> ServeOptions {
        self.listen = addr;
        self
    }

    /// A random base64 key (32 bytes), for when none is configured.
    pub fn random_key() -> String {
        let mut bytes = uuid::Uuid::new_v4().as_bytes().to_vec();
        bytes.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// `ServeOptions.key` is not base64.
    #[error("ServeOptions.key (the Shared Key) is not base64: {0}")]
    InvalidKey(base64::DecodeError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A Batch spec could not be loaded.
    #[error(transparent)]
    Spec(#[from] shipyard_batch_spec::schema::SchemaError),
    /// The local engine could not be opened on its state directory.
    #[cfg(feature = "engine")]
    #[error("cannot open the local engine on state directory {state_dir}: {source}")]
    Engine {
        /// The state directory.
        state_dir: std::path::PathBuf,
        /// The engine's error.
        source: Box<shipyard_local::EngineError>,
    },
}

/// Binds `addr` (the listen step of [`Server::bind`]).
pub(crate) async fn bind_listener(addr: SocketAddr) -> Result<tokio::net::TcpListener, ServeError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })
}

/// A running server; dropping it stops accepting connections.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Server {
    /// Binds `opts.listen` and serves `backend` on the current tokio runtime.
    pub async fn bind<B: Backend + 'static>(
        opts: ServeOptions,
        backend: B,
    ) -> Result<Server, ServeError> {
        Self::bind_shared(opts, Arc::new(backend)).await
    }

    /// [`Server::bind`] with an already shared backend.
    pub async fn bind_shared(
        opts: ServeOptions,
        backend: Arc<dyn Backend>,
    ) -> Result<Server, ServeError> {
        let listener = bind_listener(opts.listen).await?;
        Self::serve_listener(opts, listener, backend, None)
    }

    /// Serves `backend` on an already bound listener (must be called on a tokio runtime);
    /// `state_dir`, when given, keeps the 2025-only properties of objects across restarts.
    pub(crate) fn serve_listener(
        opts: ServeOptions,
        listener: tokio::net::TcpListener,
        backend: Arc<dyn Backend>,
        state_dir: Option<&std::path::Path>,
    ) -> Result<Server, ServeError> {
        let key = base64::engine::general_purpose::STANDARD
            .decode(&opts.key)
            .map_err(ServeError::InvalidKey)?;
        // Load both specs up front: a broken install fails here, not on the first request.
        for v in shipyard_batch_spec::schema::API_VERSIONS {
            shipyard_batch_spec::schema::Spec::for_api_version(v)?;
        }
        let addr = listener.local_addr().map_err(|source| ServeError::Bind {
            addr: opts.listen,
            source,
        })?;
        let base_url = opts
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{addr}"));
        let ctx = Arc::new(http::Ctx {
            account: opts.account.clone(),
            key,
            base_url,
            backend,
            extras: match state_dir {
                Some(dir) => extras::Extras::persisted(dir.join(EXTRAS_FILE)),
                None => extras::Extras::default(),
            },
        });
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(http::serve(listener, ctx, rx));
        tracing::info!(%addr, account = %opts.account, "shipyard serve listening");
        Ok(Server {
            addr,
            shutdown: Some(tx),
            task: Some(task),
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting connections and waits for the accept loop to end.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}
