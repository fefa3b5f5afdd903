//! A strict local Azure Batch server for tests and benchmarks.
