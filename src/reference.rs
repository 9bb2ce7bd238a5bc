//! Image references, parsed as docker does. (Owned by the registry work; see the contract below.)
//!
//! Contract:
//! ```ignore
//! pub struct Reference { pub registry: String, pub repository: String, pub tag: Option<String>, pub digest: Option<Digest> }
//! impl Reference {
//!     pub fn parse(s: &str) -> Result<Reference, ReferenceError>; // "python:3.9-slim" → docker.io/library/python:3.9-slim
//!     pub fn api_host(&self) -> &str;          // "registry-1.docker.io" for docker.io, else registry
//!     pub fn tag_or_latest(&self) -> &str;     // tag, or "latest" when neither tag nor digest given
//!     pub fn with_digest(&self, d: Digest) -> Reference;
//!     pub fn is_loopback(&self) -> bool;       // localhost, 127.0.0.0/8, [::1]
//! }
//! impl Display for Reference // "docker.io/library/python:3.9-slim", "host:5000/a/b:tag@sha256:…"
//! ```
