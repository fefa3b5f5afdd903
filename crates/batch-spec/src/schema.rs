//! Validation of JSON values against the definitions of the Batch Swagger spec.
