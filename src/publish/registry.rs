//! Stage 5, to a registry: every blob HEADed first, base blobs mounted from the base's repository
//! when it is on the same registry, the rest uploaded monolithically from the cache (a few at a
//! time), the manifest last — so the tag never points at an image with missing blobs.

use futures_util::stream::{self, StreamExt, TryStreamExt};

use crate::base::BaseImage;
use crate::cache::Cache;
use crate::digest::Digest;
use crate::image::BuiltImage;
use crate::oci::{self, Descriptor};
use crate::reference::Reference;
use crate::registry::{RegistryClient, RegistryError};
use crate::report::Reporter;

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Cache(#[from] crate::cache::CacheError),
}

/// What a push did, for the report and for tests.
#[derive(Debug, Default, Clone)]
pub struct PushStats {
    pub uploaded: Vec<Digest>,
    pub mounted: Vec<Digest>,
    pub existing: Vec<Digest>,
}

enum BlobOutcome {
    Existing(Digest),
    Mounted(Digest),
    Uploaded(Digest),
}

/// Push the image to `target` (which carries the tag). Returns the target pinned by digest.
pub async fn push(
    client: &RegistryClient,
    image: &BuiltImage,
    target: &Reference,
    base: &BaseImage,
    cache: &Cache,
    jobs: usize,
    reporter: &dyn Reporter,
) -> Result<(Reference, PushStats), PushError> {
    cache.put_blob_bytes(&image.config)?;
    let same_registry = base.pinned.registry == target.registry;
    let mut blobs: Vec<(Descriptor, bool)> = image
        .layers
        .iter()
        .enumerate()
        .map(|(i, d)| (d.clone(), i < image.base_layer_count))
        .collect();
    blobs.push((image.config_descriptor.clone(), false));
    // The same blob can appear twice (an empty layer); push it once.
    let mut seen = std::collections::BTreeSet::new();
    blobs.retain(|(d, _)| seen.insert(d.digest.clone()));

    let outcomes: Vec<BlobOutcome> = stream::iter(blobs)
        .map(|(desc, from_base)| async move {
            if client.blob_exists(target, &desc.digest).await? {
                return Ok::<_, PushError>(BlobOutcome::Existing(desc.digest));
            }
            if from_base
                && same_registry
                && client
                    .mount_blob(target, &desc.digest, &base.pinned.repository)
                    .await?
            {
                return Ok(BlobOutcome::Mounted(desc.digest));
            }
            if !cache.has_blob(&desc.digest, Some(desc.size)) {
                // A base layer dropped from the cache since the rootfs was unpacked: stream it across again.
                client.fetch_blob(&base.pinned, &desc, cache).await?;
            }
            reporter.info(&format!(
                "Uploading {} ({})",
                short(&desc.digest),
                crate::source::format_size(desc.size)
            ));
            client
                .push_blob(
                    target,
                    &desc.digest,
                    desc.size,
                    &cache.blob_path(&desc.digest),
                )
                .await?;
            Ok(BlobOutcome::Uploaded(desc.digest))
        })
        .buffer_unordered(jobs.max(1))
        .try_collect()
        .await?;
    let mut stats = PushStats::default();
    for o in outcomes {
        match o {
            BlobOutcome::Existing(d) => stats.existing.push(d),
            BlobOutcome::Mounted(d) => stats.mounted.push(d),
            BlobOutcome::Uploaded(d) => stats.uploaded.push(d),
        }
    }
    let tag = target.tag_or_latest().to_string();
    let digest = client
        .put_manifest(target, &tag, oci::OCI_MANIFEST, image.manifest.clone())
        .await?;
    debug_assert_eq!(digest, image.manifest_digest);
    Ok((target.with_digest(image.manifest_digest.clone()), stats))
}

fn short(d: &Digest) -> String {
    format!("sha256:{}", &d.hex()[..12])
}
