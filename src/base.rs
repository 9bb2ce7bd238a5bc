//! Stage 1: the base image — reference → platform manifest → config and layers (all verified and
//! cached by digest) → an unpacked root filesystem for the sandbox (cached by manifest digest).

use std::path::{Path, PathBuf};

use futures_util::stream::{self, StreamExt, TryStreamExt};
use serde_json::Value;

use crate::cache::Cache;
use crate::digest::Digest;
use crate::oci::{self, Descriptor, Index, Manifest, Platform};
use crate::reference::Reference;
use crate::registry::{RegistryClient, RegistryError};
use crate::report::Reporter;
use crate::scratch::{Scratch, ScratchPolicy};

#[derive(Debug, thiserror::Error)]
pub enum BaseError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("{reference} has no image for {platform} (it has: {available})")]
    NoPlatform {
        reference: String,
        platform: Platform,
        available: String,
    },
    #[error("{reference}: unsupported manifest media type {media_type:?}")]
    UnsupportedManifest {
        reference: String,
        media_type: String,
    },
    #[error("{reference}: the {what} is not valid JSON")]
    BadJson {
        reference: String,
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("{reference}: the config is for {found}, not {wanted}")]
    WrongPlatform {
        reference: String,
        found: String,
        wanted: Platform,
    },
    #[error("failed to unpack the base image {reference} into {}", path.display())]
    Unpack {
        reference: String,
        path: PathBuf,
        #[source]
        source: crate::unpack::UnpackError,
    },
    #[error("failed to prepare the cache for the base image's root filesystem at {}", path.display())]
    RootfsCache {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Sandbox(#[from] crate::sandbox::SandboxError),
    #[error(transparent)]
    Cache(#[from] crate::cache::CacheError),
}

/// The resolved base image for one platform.
#[derive(Debug, Clone)]
pub struct BaseImage {
    /// As the user named it (normalized), without a digest: goes into the base.name annotation.
    pub name: String,
    /// The reference pinned to the platform manifest's digest.
    pub pinned: Reference,
    pub manifest_digest: Digest,
    /// What the reference itself resolved to (an index or the manifest): a moved tag shows here.
    pub reference_digest: Digest,
    pub manifest: Manifest,
    pub config: Value,
    pub platform: Platform,
}

impl BaseImage {
    /// The PATH the base sets (the sandbox uses it to find python).
    pub fn path_env(&self) -> String {
        self.config
            .pointer("/config/Env")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .find_map(|e| e.strip_prefix("PATH=").map(String::from))
            .unwrap_or_else(|| {
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()
            })
    }
}

/// Resolve the reference to the platform's manifest and config.
pub async fn resolve(
    client: &RegistryClient,
    reference: &Reference,
    platform: &Platform,
    cache: &Cache,
) -> Result<BaseImage, BaseError> {
    let shown = reference.to_string();
    let name = Reference {
        digest: None,
        ..reference.clone()
    };
    let (bytes, media_type, digest) = fetch_manifest(client, reference, cache).await?;
    let (manifest_bytes, manifest_digest) = if oci::is_index_media_type(&media_type)
        || looks_like_index(&bytes)
    {
        let index: Index = serde_json::from_slice(&bytes).map_err(|source| BaseError::BadJson {
            reference: shown.clone(),
            what: "index",
            source,
        })?;
        let chosen = index
            .manifests
            .iter()
            .find(|m| m.platform.as_ref().is_some_and(|p| platform.matches(p)))
            .ok_or_else(|| BaseError::NoPlatform {
                reference: shown.clone(),
                platform: platform.clone(),
                available: index
                    .manifests
                    .iter()
                    .filter_map(|m| m.platform.as_ref().map(|p| p.to_string()))
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        let r = reference.with_digest(chosen.digest.clone());
        let (b, mt, d) = fetch_manifest(client, &r, cache).await?;
        if !oci::is_manifest_media_type(&mt) && !mt.is_empty() {
            return Err(BaseError::UnsupportedManifest {
                reference: shown,
                media_type: mt,
            });
        }
        (b, d)
    } else if oci::is_manifest_media_type(&media_type) || media_type.is_empty() {
        (bytes, digest.clone())
    } else {
        return Err(BaseError::UnsupportedManifest {
            reference: shown,
            media_type,
        });
    };
    let manifest: Manifest =
        serde_json::from_slice(&manifest_bytes).map_err(|source| BaseError::BadJson {
            reference: shown.clone(),
            what: "manifest",
            source,
        })?;
    let pinned = reference.with_digest(manifest_digest.clone());
    let config_path = client.fetch_blob(&pinned, &manifest.config, cache).await?;
    let config_bytes = std::fs::read(&config_path).map_err(|source| BaseError::RootfsCache {
        path: config_path.clone(),
        source,
    })?;
    let config: Value =
        serde_json::from_slice(&config_bytes).map_err(|source| BaseError::BadJson {
            reference: shown.clone(),
            what: "config",
            source,
        })?;
    let os = config.get("os").and_then(Value::as_str).unwrap_or("");
    let arch = config
        .get("architecture")
        .and_then(Value::as_str)
        .unwrap_or("");
    if os != platform.os || arch != platform.architecture {
        return Err(BaseError::WrongPlatform {
            reference: shown,
            found: format!("{os}/{arch}"),
            wanted: platform.clone(),
        });
    }
    Ok(BaseImage {
        name: name.to_string(),
        pinned,
        manifest_digest,
        reference_digest: digest,
        manifest,
        config,
        platform: platform.clone(),
    })
}

fn looks_like_index(bytes: &[u8]) -> bool {
    serde_json::from_slice::<Value>(bytes)
        .ok()
        .is_some_and(|v| v.get("manifests").is_some() && v.get("layers").is_none())
}

/// A manifest by digest from the cache, or from the registry (then cached).
async fn fetch_manifest(
    client: &RegistryClient,
    r: &Reference,
    cache: &Cache,
) -> Result<(Vec<u8>, String, Digest), BaseError> {
    if let Some(d) = &r.digest
        && let Ok(bytes) = cache.read_blob(d)
    {
        let mt = serde_json::from_slice::<Value>(&bytes)
            .ok()
            .and_then(|v| v.get("mediaType").and_then(Value::as_str).map(String::from))
            .unwrap_or_default();
        return Ok((bytes, mt, d.clone()));
    }
    let m = client.get_manifest(r).await?;
    cache.put_blob_bytes(&m.bytes)?;
    Ok((m.bytes, m.media_type, m.digest))
}

/// Download every layer of the base into the cache (skipping those present), `jobs` at once.
pub async fn fetch_layers(
    client: &RegistryClient,
    base: &BaseImage,
    cache: &Cache,
    jobs: usize,
    reporter: &dyn Reporter,
) -> Result<Vec<PathBuf>, BaseError> {
    let missing = base
        .manifest
        .layers
        .iter()
        .filter(|l| !cache.has_blob(&l.digest, Some(l.size)))
        .count();
    if missing > 0 {
        reporter.info(&format!("Pulling {missing} base layer(s) of {}", base.name));
    }
    let paths: Vec<PathBuf> = stream::iter(base.manifest.layers.iter())
        .map(|l: &Descriptor| client.fetch_blob(&base.pinned, l, cache))
        .buffered(jobs.max(1))
        .try_collect()
        .await?;
    Ok(paths)
}

/// What a build needs to know of the base's root filesystem without unpacking it again:
/// recorded per base manifest when it is unpacked.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
struct RootfsFacts {
    /// Whether /home exists (autopackaging's `mkdir -p /home`).
    home: bool,
}

impl RootfsFacts {
    fn of(root: &Path) -> Self {
        RootfsFacts {
            home: std::fs::symlink_metadata(root.join("home")).is_ok(),
        }
    }
}

/// The base's root filesystem for the sandbox, made on first use: the cache's copy when an
/// earlier build kept one there, else unpacked into a scratch tree in memory when it fits
/// ([`crate::scratch`]; gone with the build), else unpacked into the cache and kept.
pub struct Rootfs<'a> {
    base: &'a BaseImage,
    layers: Vec<PathBuf>,
    cache: &'a Cache,
    policy: ScratchPolicy,
    made: tokio::sync::OnceCell<(PathBuf, Option<Scratch>)>,
}

impl<'a> Rootfs<'a> {
    /// `layers`: the base's layer blobs in the cache, in order ([`fetch_layers`]).
    pub fn new(
        base: &'a BaseImage,
        layers: Vec<PathBuf>,
        cache: &'a Cache,
        policy: ScratchPolicy,
    ) -> Self {
        Rootfs {
            base,
            layers,
            cache,
            policy,
            made: tokio::sync::OnceCell::new(),
        }
    }

    /// The root filesystem's path, unpacking it on the first call.
    pub async fn path(&self, reporter: &dyn Reporter) -> Result<PathBuf, BaseError> {
        let (p, _) = self.made.get_or_try_init(|| self.make(reporter)).await?;
        Ok(p.clone())
    }

    /// Whether the base lacks /home: from the record of an earlier unpack of this base, so a
    /// build that runs no pip unpacks nothing.
    pub async fn home_missing(&self, reporter: &dyn Reporter) -> Result<bool, BaseError> {
        let key = self.facts_key();
        if let Some(f) = self
            .cache
            .get_record::<RootfsFacts>("rootfs-facts-v1", &key)
        {
            return Ok(!f.home);
        }
        let root = self.path(reporter).await?;
        Ok(!RootfsFacts::of(&root).home)
    }

    fn facts_key(&self) -> Digest {
        Digest::of(format!("rootfs facts v1\n{}", self.base.manifest_digest).as_bytes())
    }

    async fn make(&self, reporter: &dyn Reporter) -> Result<(PathBuf, Option<Scratch>), BaseError> {
        let base = self.base;
        let cache = self.cache;
        let dir = cache.rootfs_dir(&base.manifest_digest);
        if dir.join(".complete").is_file() {
            return Ok((dir.join("rootfs"), None));
        }
        let need = unpacked_size(&self.layers);
        let scratch = crate::scratch::create(cache, "rootfs-", need, true, self.policy).map_err(
            |source| BaseError::RootfsCache {
                path: cache.tmp_dir(),
                source,
            },
        )?;
        let where_ = if scratch.in_memory() {
            "in memory"
        } else {
            "into the cache"
        };
        reporter.info(&format!("Unpacking {}", base.name));
        reporter.debug(&format!(
            "unpacking {} ({} MB estimated) {where_}: {}",
            base.name,
            need / 1_000_000,
            scratch.path().display()
        ));
        let root = scratch.path().join("rootfs");
        std::fs::create_dir(&root).map_err(|source| BaseError::RootfsCache {
            path: root.clone(),
            source,
        })?;
        let (r, layer_paths) = (root.clone(), self.layers.clone());
        tokio::task::spawn_blocking(move || crate::unpack::unpack_layers(&layer_paths, &r))
            .await
            .expect("unpack task")
            .map_err(|source| BaseError::Unpack {
                reference: base.name.clone(),
                path: root.clone(),
                source,
            })?;
        let facts = RootfsFacts::of(&root);
        crate::sandbox::prepare_rootfs(&root)?;
        let _ = cache.put_record("rootfs-facts-v1", &self.facts_key(), &facts);
        if scratch.in_memory() {
            return Ok((root, Some(scratch)));
        }
        // On disk: keep it in the cache for the next build that runs pip.
        std::fs::write(
            scratch.path().join(".complete"),
            base.manifest_digest.as_str(),
        )
        .map_err(|source| BaseError::RootfsCache {
            path: scratch.path().into(),
            source,
        })?;
        let tmp_path = scratch.keep();
        if let Err(e) = std::fs::rename(&tmp_path, &dir) {
            // Another build may have finished the same rootfs first; use theirs.
            let _ = std::fs::remove_dir_all(&tmp_path);
            if !dir.join(".complete").is_file() {
                return Err(BaseError::RootfsCache {
                    path: dir,
                    source: e,
                });
            }
        }
        Ok((dir.join("rootfs"), None))
    }
}

/// About how many bytes the layers unpack to: gzip's trailer holds the uncompressed size (mod
/// 2^32); other layers are counted at 4x their compressed size. Plus 10% for file-system
/// overhead.
fn unpacked_size(layers: &[PathBuf]) -> u64 {
    use std::io::{Read, Seek, SeekFrom};
    let one = |p: &PathBuf| -> Option<u64> {
        let mut f = std::fs::File::open(p).ok()?;
        let len = f.metadata().ok()?.len();
        let mut magic = [0u8; 2];
        f.read_exact(&mut magic).ok()?;
        if magic != [0x1f, 0x8b] || len < 18 {
            return Some(len * 4);
        }
        f.seek(SeekFrom::End(-4)).ok()?;
        let mut isize = [0u8; 4];
        f.read_exact(&mut isize).ok()?;
        let n = u32::from_le_bytes(isize) as u64;
        // A layer over 4 GiB wraps: never trust less than the compressed size.
        Some(if n < len { len * 4 } else { n })
    };
    let total = layers
        .iter()
        .map(|p| one(p).unwrap_or(u64::MAX))
        .fold(0u64, u64::saturating_add);
    total.saturating_add(total / 10)
}
