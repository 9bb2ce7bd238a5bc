//! What can go wrong talking to a registry, always with what was being done and to what.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use reqwest::StatusCode;

use crate::cache::CacheError;
use crate::digest::Digest;

/// One registry operation and its subject; the first half of every error message ("failed to …").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    FetchManifest {
        reference: String,
    },
    FetchBlob {
        repository: String,
        digest: Digest,
    },
    CheckBlob {
        repository: String,
        digest: Digest,
    },
    MountBlob {
        repository: String,
        from: String,
        digest: Digest,
    },
    PushBlob {
        repository: String,
        digest: Digest,
    },
    StartUpload {
        repository: String,
    },
    PushManifest {
        reference: String,
    },
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Operation::FetchManifest { reference } => write!(f, "fetch manifest for {reference}"),
            Operation::FetchBlob { repository, digest } => {
                write!(f, "fetch blob {digest} from {repository}")
            }
            Operation::CheckBlob { repository, digest } => {
                write!(f, "check for blob {digest} in {repository}")
            }
            Operation::MountBlob {
                repository,
                from,
                digest,
            } => write!(f, "mount blob {digest} from {from} into {repository}"),
            Operation::PushBlob { repository, digest } => {
                write!(f, "push blob {digest} to {repository}")
            }
            Operation::StartUpload { repository } => {
                write!(f, "start an upload in {repository}")
            }
            Operation::PushManifest { reference } => write!(f, "push manifest to {reference}"),
        }
    }
}

/// The registry's explanation of a failed request: the `errors[]` of its JSON body, or a short
/// plain-text body. Empty when it gave none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorDetails(Vec<String>);

impl ErrorDetails {
    const MAX_TEXT: usize = 200;

    /// Parse a response body: `{"errors":[{"code":…,"message":…}]}` or short plain text.
    pub fn from_body(content_type: Option<&str>, body: &[u8]) -> Self {
        #[derive(serde::Deserialize)]
        struct Body {
            errors: Vec<Entry>,
        }
        #[derive(serde::Deserialize)]
        struct Entry {
            #[serde(default)]
            code: String,
            #[serde(default)]
            message: String,
        }
        if let Ok(b) = serde_json::from_slice::<Body>(body) {
            return ErrorDetails(
                b.errors
                    .into_iter()
                    .map(|e| match (e.code.is_empty(), e.message.is_empty()) {
                        (false, false) => format!("{}: {}", e.code, e.message),
                        (false, true) => e.code,
                        _ => e.message,
                    })
                    .filter(|s| !s.is_empty())
                    .collect(),
            );
        }
        let is_text = content_type.is_some_and(|ct| ct.starts_with("text/plain"));
        let text = String::from_utf8_lossy(body);
        let text = text.trim();
        if is_text && !text.is_empty() && text.len() <= Self::MAX_TEXT {
            return ErrorDetails(vec![text.to_string()]);
        }
        ErrorDetails::default()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn messages(&self) -> &[String] {
        &self.0
    }
}

impl fmt::Display for ErrorDetails {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("; "))
    }
}

/// " (details)" or nothing.
fn paren(d: &ErrorDetails) -> String {
    if d.is_empty() {
        String::new()
    } else {
        format!(" ({d})")
    }
}

fn fmt_hint(h: &Option<String>) -> String {
    h.as_ref().map(|h| format!("; {h}")).unwrap_or_default()
}

/// " after N attempts" once a request was retried, else nothing.
fn after(attempts: &u32) -> String {
    if *attempts > 1 {
        format!(" after {attempts} attempts")
    } else {
        String::new()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("failed to set up the HTTP client")]
    ClientSetup(#[source] reqwest::Error),

    #[error("failed to load trusted certificates from {source_name} ({}): {problem}", path.display())]
    TrustStore {
        source_name: String,
        path: PathBuf,
        problem: String,
    },

    #[error("{name} is invalid: {problem}")]
    Setting { name: &'static str, problem: String },

    #[error("failed to read the Docker config file {}", path.display())]
    DockerConfig {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("failed to parse the Docker config file {}", path.display())]
    DockerConfigFormat {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    #[error(
        "failed to {op}{}: cannot connect to registry host {host}",
        after(attempts)
    )]
    Connect {
        op: Box<Operation>,
        host: String,
        /// How many times the request was tried (1 until the retry policy gives up).
        attempts: u32,
        #[source]
        source: reqwest::Error,
    },

    #[error(
        "failed to {op}: the TLS certificate of {host} is not trusted; put its CA certificate in \
         /etc/containers/certs.d/{host}/ca.crt (or ~/.config/containers/certs.d/{host}/ca.crt, or \
         a bundle named by SSL_CERT_FILE), or pass --insecure-registry {host} to skip verification"
    )]
    Certificate {
        op: Box<Operation>,
        host: String,
        #[source]
        source: reqwest::Error,
    },

    #[error("failed to {op}{}: the request to {host} failed", after(attempts))]
    Transport {
        op: Box<Operation>,
        host: String,
        attempts: u32,
        #[source]
        source: reqwest::Error,
    },

    #[error(
        "failed to {op}{}: the upload to {host} made no progress for {} s",
        after(attempts),
        waited.as_secs()
    )]
    Stalled {
        op: Box<Operation>,
        host: String,
        waited: Duration,
        attempts: u32,
    },

    /// The registry answered with an unexpected status.
    #[error(
        "failed to {op}{}: {status}{}{}",
        after(attempts),
        paren(details),
        fmt_hint(hint)
    )]
    Status {
        op: Box<Operation>,
        status: StatusCode,
        details: ErrorDetails,
        /// What to check, for authentication failures (never contains a secret).
        hint: Option<String>,
        /// The `Retry-After` the registry asked for (seconds form), for 429 and 503.
        retry_after: Option<Duration>,
        attempts: u32,
    },

    /// The credential helper configured for the registry failed: like docker, stop rather than
    /// go on anonymously.
    #[error("failed to {op}")]
    CredentialHelper {
        op: Box<Operation>,
        #[source]
        source: super::auth::HelperError,
    },

    #[error("failed to {op}: refusing to send credentials to {host} over plain HTTP")]
    InsecureCredentials { op: Box<Operation>, host: String },

    #[error("failed to {op}: cannot understand the registry's authentication challenge {header:?}")]
    Challenge { op: Box<Operation>, header: String },

    #[error(
        "failed to {op}{}: the token server {realm} answered {status}{}{}",
        after(attempts),
        paren(details),
        fmt_hint(hint)
    )]
    TokenStatus {
        op: Box<Operation>,
        realm: String,
        status: StatusCode,
        details: ErrorDetails,
        hint: Option<String>,
        attempts: u32,
    },

    #[error("failed to {op}{}: cannot get a token from {realm}", after(attempts))]
    TokenTransport {
        op: Box<Operation>,
        realm: String,
        attempts: u32,
        #[source]
        source: reqwest::Error,
    },

    #[error("failed to {op}: the token server {realm} gave no token")]
    TokenMissing { op: Box<Operation>, realm: String },

    #[error("failed to {op}: the content's digest is {actual}, expected {expected}")]
    DigestMismatch {
        op: Box<Operation>,
        expected: Digest,
        actual: Digest,
    },

    #[error("failed to {op}: got {actual} bytes, expected {expected}")]
    SizeMismatch {
        op: Box<Operation>,
        expected: u64,
        actual: u64,
    },

    #[error("failed to {op}: {problem}")]
    InvalidResponse { op: Box<Operation>, problem: String },

    #[error("failed to {op}: {problem}")]
    InvalidArgument { op: Box<Operation>, problem: String },

    #[error("failed to {op}: cannot read {}", path.display())]
    ReadFile {
        op: Box<Operation>,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("failed to {op}: cannot store it in the cache")]
    Cache {
        op: Box<Operation>,
        #[source]
        source: CacheError,
    },
}

impl RegistryError {
    /// The HTTP status the registry answered with, when that is what failed.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            RegistryError::Status { status, .. } | RegistryError::TokenStatus { status, .. } => {
                Some(*status)
            }
            _ => None,
        }
    }

    /// Record how many times the request was tried, for the message ("after N attempts").
    pub(crate) fn set_attempts(&mut self, n: u32) {
        match self {
            RegistryError::Connect { attempts, .. }
            | RegistryError::Transport { attempts, .. }
            | RegistryError::Stalled { attempts, .. }
            | RegistryError::Status { attempts, .. }
            | RegistryError::TokenStatus { attempts, .. }
            | RegistryError::TokenTransport { attempts, .. } => *attempts = n,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_details_from_json_and_text() {
        let d = ErrorDetails::from_body(
            Some("application/json"),
            br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{"Tag":"x"}}]}"#,
        );
        assert_eq!(d.to_string(), "MANIFEST_UNKNOWN: manifest unknown");
        let d = ErrorDetails::from_body(
            None,
            br#"{"errors":[{"code":"DENIED"},{"message":"second"}]}"#,
        );
        assert_eq!(d.to_string(), "DENIED; second");
        let d = ErrorDetails::from_body(Some("text/plain; charset=utf-8"), b"  quota exceeded\n");
        assert_eq!(d.to_string(), "quota exceeded");
        assert!(ErrorDetails::from_body(Some("text/html"), b"<html>nope</html>").is_empty());
        assert!(ErrorDetails::from_body(Some("text/plain"), &[b'x'; 500]).is_empty());
    }

    #[test]
    fn status_error_reads_like_a_sentence() {
        let e = RegistryError::Status {
            op: Box::new(Operation::FetchManifest {
                reference: "127.0.0.1:5000/library/python:3.9-slim".into(),
            }),
            status: StatusCode::NOT_FOUND,
            details: ErrorDetails(vec!["MANIFEST_UNKNOWN: manifest unknown".into()]),
            hint: None,
            retry_after: None,
            attempts: 1,
        };
        assert_eq!(
            e.to_string(),
            "failed to fetch manifest for 127.0.0.1:5000/library/python:3.9-slim: 404 Not Found (MANIFEST_UNKNOWN: manifest unknown)"
        );
    }

    #[test]
    fn a_retried_error_says_how_many_attempts() {
        let mut e = RegistryError::Status {
            op: Box::new(Operation::PushManifest {
                reference: "127.0.0.1:5000/x/y:v1".into(),
            }),
            status: StatusCode::SERVICE_UNAVAILABLE,
            details: ErrorDetails::default(),
            hint: None,
            retry_after: None,
            attempts: 1,
        };
        e.set_attempts(5);
        assert_eq!(
            e.to_string(),
            "failed to push manifest to 127.0.0.1:5000/x/y:v1 after 5 attempts: 503 Service Unavailable"
        );
    }
}
