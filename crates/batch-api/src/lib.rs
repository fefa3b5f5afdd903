//! Azure Batch data-plane REST models and client.

pub mod models;
