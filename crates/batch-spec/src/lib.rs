//! Test support: validate JSON against the Azure Batch Swagger spec, and a strict local Batch server.
