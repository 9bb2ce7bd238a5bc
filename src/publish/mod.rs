//! Stage 5: publish the image — to a registry, an OCI layout folder, or an OCI archive.

pub mod layout;
pub mod registry;
