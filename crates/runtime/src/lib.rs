//! Domain model, the ContainerRuntime trait, the runtime registry and dynamic runtime plugins.
