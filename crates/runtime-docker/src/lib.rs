//! Docker container runtime for shipyard: native and non-native Azure Batch pools.
