//! vxbuild: daemonless, rootless, reproducible OCI images for Python training code.
//!
//! One build is a pipeline of stages, each a module with one typed input and one typed output:
//! plan → resolve base → install deps → layers → image → publish.

pub mod cache;
pub mod digest;
pub mod layer;
pub mod oci;
pub mod reference;
pub mod registry;
pub mod report;
pub mod source;
pub mod unpack;
