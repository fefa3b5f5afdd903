//! Test support for shipyard: validate JSON against the Azure Batch Swagger spec, and a strict
//! local Azure Batch server.
//!
//! - [`schema`]: [`schema::Spec`] loads `BatchService.json` (api-version `2024-07-01.20.0`,
//!   vendored in this crate's `spec/` directory; override with [`schema::SPEC_ENV`]), matches
//!   request paths to operations and validates bodies strictly (unknown properties, enum
//!   spellings, int32 ranges and `maxItems` are violations, each named by its JSON pointer).
//! - [`server`]: [`server::TestServer`], a real HTTP server on `127.0.0.1` that checks Shared
//!   Key signatures and bearer tokens, validates every body against the spec, keeps pools, jobs,
//!   tasks and files in memory, and injects faults (429, 503, dropped connections, lost replies
//!   after commit) so client retry behaviour can be asserted.
//!
//! It is test support only (`publish = false`): a failure to load the spec is an error from
//! [`server::TestServer::start`], and a panic naming the file from [`schema::Spec::shared`].

#![warn(missing_docs)]

pub mod schema;
pub mod server;
pub mod wire;
