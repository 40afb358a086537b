//! Typed errors. An [`ObjectError`] names the object (origin file, kind,
//! namespace/name) and wraps a [`ConvertError`] naming the field; a
//! [`SourceError`] is a failure of a whole source (a directory that cannot be
//! read or watched).

use std::path::PathBuf;

use crate::model::ObjectKey;

/// Why one object (or one document) was rejected. `field` is the JSON path
/// inside the object, e.g. `spec.ports[1].targetPort`.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("{field}: required")]
    Missing { field: String },
    #[error("{field}: {value:?} is not a valid IP address")]
    InvalidIp { field: String, value: String },
    #[error("{field}: {value} is out of range 1-65535")]
    PortRange { field: String, value: i64 },
    #[error("{field}: unsupported value {value:?} (expected {expected})")]
    Unsupported { field: String, value: String, expected: &'static str },
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    /// The document has the object's kind but not its shape (a string where a
    /// number belongs, a wrong apiVersion...).
    #[error("{field}: does not match the schema: {source}")]
    Schema {
        field: String,
        #[source]
        source: serde_json::Error,
    },
    /// The text is not YAML/JSON at all. Reported once per file.
    #[error("syntax error: {0}")]
    Syntax(String),
}

impl ConvertError {
    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid { field: field.into(), reason: reason.into() }
    }
}

/// One rejected object: where it came from, what it was, and why.
#[derive(Debug, thiserror::Error)]
#[error("{origin}: {kind} {}: {error}", key.as_ref().map(|k| k.to_string()).unwrap_or_else(|| "(unnamed)".into()))]
pub struct ObjectError {
    /// The file (or other source) the object came from.
    pub origin: String,
    /// `Service`, `EndpointSlice`, `Node`, or `document` when the text could
    /// not be parsed far enough to know.
    pub kind: String,
    pub key: Option<ObjectKey>,
    #[source]
    pub error: ConvertError,
}

impl ObjectError {
    /// True when the whole file failed to parse (as opposed to one object in
    /// it being invalid).
    pub fn is_syntax(&self) -> bool {
        matches!(self.error, ConvertError::Syntax(_))
    }
}

/// A source as a whole failed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("reading directory {path}: {source}")]
    ReadDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading {path}: {source}")]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a directory")]
    NotADirectory { path: PathBuf },
    #[error("watching directory {path}: {source}")]
    Watch {
        path: PathBuf,
        #[source]
        source: notify::Error,
    },
    #[error("Kubernetes API: {context}: {source}")]
    Kube {
        context: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// [`crate::Catalog::from_yaml`] with invalid fixture text.
    #[error("invalid catalog text: {}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Objects(Vec<ObjectError>),
}
