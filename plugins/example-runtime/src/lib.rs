//! An example shipyard runtime plugin.
