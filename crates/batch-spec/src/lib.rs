//! Test support for shipyard: validate JSON against the Azure Batch Swagger spec in
//! `shared/azure-batch-spec/`, and a strict local Azure Batch server.

pub mod schema;
pub mod server;
