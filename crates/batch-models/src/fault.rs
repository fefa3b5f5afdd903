//! [`ServiceFault`]: a refusal the Batch service answers with one of its error codes.
//!
//! The shared vocabulary of everything that plays the service on this machine: the local
//! engine reports these, `shipyard serve` renders them as the service's error bodies.

use std::fmt;

/// A request the service refuses, with the Batch error code it answers.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServiceFault {
    /// 404: `PoolNotFound`, `JobNotFound`, `TaskNotFound`, `NodeNotFound`, `FileNotFound`.
    NotFound {
        /// Batch error code.
        code: &'static str,
        /// What was looked up.
        id: String,
    },
    /// 409: `PoolExists`, `JobExists`, `TaskExists`, `PoolBeingDeleted`, `JobCompleted`, …:
    /// the object exists or is in a state that forbids the operation.
    Conflict {
        /// Batch error code.
        code: &'static str,
        /// The object concerned.
        id: String,
    },
    /// 400: a request value the service would reject.
    Invalid {
        /// Batch error code, e.g. `InvalidPropertyValue`.
        code: &'static str,
        /// The property, as a JSON path.
        property: String,
        /// Why.
        reason: String,
    },
}

impl ServiceFault {
    /// A 404 with `code` for `id`.
    pub fn not_found(code: &'static str, id: impl Into<String>) -> Self {
        ServiceFault::NotFound {
            code,
            id: id.into(),
        }
    }

    /// A 409 with `code` for `id`.
    pub fn conflict(code: &'static str, id: impl Into<String>) -> Self {
        ServiceFault::Conflict {
            code,
            id: id.into(),
        }
    }

    /// A 400 `InvalidPropertyValue` for `property`, saying why.
    pub fn invalid(property: impl Into<String>, reason: impl Into<String>) -> Self {
        ServiceFault::Invalid {
            code: "InvalidPropertyValue",
            property: property.into(),
            reason: reason.into(),
        }
    }

    /// The Batch error code.
    pub fn code(&self) -> &'static str {
        match self {
            ServiceFault::NotFound { code, .. }
            | ServiceFault::Conflict { code, .. }
            | ServiceFault::Invalid { code, .. } => code,
        }
    }

    /// The HTTP status the service answers with.
    pub fn http_status(&self) -> u16 {
        match self {
            ServiceFault::NotFound { .. } => 404,
            ServiceFault::Conflict { .. } => 409,
            ServiceFault::Invalid { .. } => 400,
        }
    }
}

impl fmt::Display for ServiceFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServiceFault::NotFound { code, id } => write!(f, "{code}: {id} does not exist"),
            ServiceFault::Conflict { code, id } => write!(f, "{code}: {id}"),
            ServiceFault::Invalid {
                code,
                property,
                reason,
            } => write!(f, "{code}: {property}: {reason}"),
        }
    }
}

impl std::error::Error for ServiceFault {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_carry_code_status_and_subject() {
        let f = ServiceFault::not_found("JobNotFound", "j1");
        assert_eq!((f.code(), f.http_status()), ("JobNotFound", 404));
        assert_eq!(f.to_string(), "JobNotFound: j1 does not exist");
        let f = ServiceFault::conflict("PoolExists", "p");
        assert_eq!((f.code(), f.http_status()), ("PoolExists", 409));
        let f = ServiceFault::invalid("targetDedicatedNodes", "must be >= 0");
        assert_eq!((f.code(), f.http_status()), ("InvalidPropertyValue", 400));
        assert_eq!(
            f.to_string(),
            "InvalidPropertyValue: targetDedicatedNodes: must be >= 0"
        );
    }
}
