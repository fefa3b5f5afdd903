//! Serde models of the Azure Batch data-plane API (api-version 2024-07-01.20.0).
