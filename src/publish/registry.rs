//! Stage 5, to a registry: blobs the cache knows the repository has are not asked about; the
//! others are HEADed, mounted from the base's repository (or any repository of the same registry
//! the cache saw them pushed to), else uploaded monolithically from the cache (a few at a time);
//! the manifest last — so the tag never points at an image with missing blobs.
//!
//! What a push left in a registry is remembered in the cache (`pushed-v1`, one record per
//! registry). If the registry lost a blob since (garbage collection, a deleted repository), the
//! manifest is refused; then the record is dropped and the push runs again asking about every
//! blob.

use std::collections::{BTreeMap, BTreeSet};

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
    /// Known to be in the repository from an earlier push: not asked about.
    pub known: Vec<Digest>,
    pub uploaded: Vec<Digest>,
    pub mounted: Vec<Digest>,
    pub existing: Vec<Digest>,
}

enum BlobOutcome {
    Known(Digest),
    Existing(Digest),
    Mounted(Digest),
    Uploaded(Digest),
}

/// Blobs smaller than this that the cache does not know the registry has are uploaded without a
/// HEAD first.
pub const NO_HEAD_BELOW: u64 = 256 * 1024;

/// Blobs known to be in each repository of one registry (digests as strings, sorted).
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
struct Known {
    repositories: BTreeMap<String, BTreeSet<String>>,
}

impl Known {
    fn key(registry: &str) -> Digest {
        Digest::of(format!("vxbuild pushed blobs v1\n{registry}").as_bytes())
    }

    fn load(cache: &Cache, registry: &str) -> Known {
        cache
            .get_record("pushed-v1", &Self::key(registry))
            .unwrap_or_default()
    }

    fn has(&self, repository: &str, digest: &Digest) -> bool {
        self.repositories
            .get(repository)
            .is_some_and(|s| s.contains(digest.as_str()))
    }

    /// Another repository the blob was seen in, to mount it from.
    fn elsewhere(&self, repository: &str, digest: &Digest) -> Option<&str> {
        self.repositories
            .iter()
            .find(|(r, s)| r.as_str() != repository && s.contains(digest.as_str()))
            .map(|(r, _)| r.as_str())
    }
}

/// Push the image to `target` (which carries the tag). Returns the target pinned by digest.
#[allow(clippy::too_many_arguments)]
pub async fn push(
    client: &RegistryClient,
    image: &BuiltImage,
    target: &Reference,
    base: &BaseImage,
    cache: &Cache,
    jobs: usize,
    sessions: Sessions,
    reporter: &dyn Reporter,
) -> Result<(Reference, PushStats), PushError> {
    let mut known = Known::load(cache, &target.registry);
    let trusted = known.repositories.contains_key(&target.repository);
    let result = push_once(
        client, image, target, base, cache, jobs, &sessions, reporter, &known,
    )
    .await;
    let result = match result {
        // The registry lost something the record promised: forget the record, ask about all.
        Err(PushError::Registry(e))
            if trusted
                && e.status().is_some_and(|s| s.is_client_error())
                && matches!(e, RegistryError::Status { .. }) =>
        {
            reporter.info(&format!(
                "{} refused the manifest; checking every blob again",
                target.registry
            ));
            known.repositories.remove(&target.repository);
            push_once(
                client, image, target, base, cache, jobs, &sessions, reporter, &known,
            )
            .await
        }
        r => r,
    };
    let stats = result?;
    Ok((target.with_digest(image.manifest_digest.clone()), stats))
}

#[allow(clippy::too_many_arguments)]
async fn push_once(
    client: &RegistryClient,
    image: &BuiltImage,
    target: &Reference,
    base: &BaseImage,
    cache: &Cache,
    jobs: usize,
    sessions: &Sessions,
    reporter: &dyn Reporter,
    known: &Known,
) -> Result<PushStats, PushError> {
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
    let mut seen = BTreeSet::new();
    blobs.retain(|(d, _)| seen.insert(d.digest.clone()));

    let outcomes: Vec<BlobOutcome> = stream::iter(blobs)
        .map(|(desc, from_base)| async move {
            if known.has(&target.repository, &desc.digest) {
                return Ok::<_, PushError>(BlobOutcome::Known(desc.digest));
            }
            // A small blob this registry was never seen to have (a new config or application
            // layer, almost always) is uploaded without asking first: uploading it again costs
            // less than the round trip.
            let ask = from_base || desc.size >= NO_HEAD_BELOW;
            if ask {
                match client.blob_exists(target, &desc.digest).await {
                    Ok(true) => return Ok(BlobOutcome::Existing(desc.digest)),
                    Ok(false) => {}
                    // Asking is an optimisation: a registry that cannot answer for one blob
                    // (distribution answers 500 for a link file a crash left empty) gets it
                    // mounted or uploaded again, which also repairs it. A registry that is down
                    // fails that request too, with its own error.
                    Err(e) if e.status().is_some_and(|s| s.is_server_error()) => {
                        reporter.debug(&format!("{e:#}; mounting or uploading it anyway"));
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            let mount_from = if from_base && same_registry {
                Some(base.pinned.repository.as_str())
            } else {
                known.elsewhere(&target.repository, &desc.digest)
            };
            if let Some(from) = mount_from
                && client.mount_blob(target, &desc.digest, from).await?
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
            // The sessions opened ahead are for the blobs every code change makes new: the
            // application layer (the last) and the config.
            let ahead = !ask
                && (desc.digest == image.config_descriptor.digest
                    || image.layers.last().is_some_and(|l| l.digest == desc.digest));
            let session = match ahead {
                false => None,
                true => sessions.take().await.map(|(url, carried)| {
                    if carried {
                        reporter.debug(&format!(
                            "{}: into an upload session an earlier build opened",
                            short(&desc.digest)
                        ));
                    }
                    url
                }),
            };
            client
                .push_blob(
                    target,
                    &desc.digest,
                    desc.size,
                    &cache.blob_path(&desc.digest),
                    session,
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
            BlobOutcome::Known(d) => stats.known.push(d),
            BlobOutcome::Existing(d) => stats.existing.push(d),
            BlobOutcome::Mounted(d) => stats.mounted.push(d),
            BlobOutcome::Uploaded(d) => stats.uploaded.push(d),
        }
    }
    // Every blob is in the repository now, whatever the manifest's fate: record that while the
    // manifest goes up (off the critical path of a code-only rebuild).
    let mut updated = known.clone();
    let entry = updated
        .repositories
        .entry(target.repository.clone())
        .or_default();
    entry.extend(image.layers.iter().map(|d| d.digest.to_string()));
    entry.insert(image.config_descriptor.digest.to_string());
    let (c, key) = (cache.clone(), Known::key(&target.registry));
    let record = tokio::task::spawn_blocking(move || c.put_record("pushed-v1", &key, &updated));
    let tag = target.tag_or_latest().to_string();
    let (manifest, recorded, carried) = tokio::join!(
        client.put_manifest(target, &tag, oci::OCI_MANIFEST, image.manifest.clone()),
        record,
        sessions.carry_over()
    );
    if let Ok(Err(e)) = recorded {
        reporter.warn(&format!("could not record the push in the cache: {e}"));
    }
    if let Err(e) = carried {
        reporter.warn(&format!(
            "could not keep upload sessions for the next build in the cache: {e}"
        ));
    }
    let digest = manifest?;
    debug_assert_eq!(digest, image.manifest_digest);
    Ok(stats)
}

/// Upload sessions for the new blobs a push uploads without asking first (a new application
/// layer and its config): the round trip that opens one (POST) is taken off the path of a
/// code-only rebuild.
///
/// Sessions are carried between builds: a push that uploads new blobs opens as many for the next
/// build as it needs now, while its own uploads run, and leaves them in the cache (`pushed-v1`,
/// per registry and repository, at most [`MAX_CARRIED`], none older than [`CARRY_FOR`]). The next
/// build claims them (one build only: `Cache::take_record`) and PUTs into them at once; one the
/// registry no longer knows (purged, or a restart with another secret) costs one round trip and
/// is replaced by a fresh session (`RegistryClient::push_blob`). A build without carried
/// sessions opens its own while it writes the blobs. So a repository keeps at most
/// [`MAX_CARRIED`] idle upload sessions per cache that pushes to it; a registry expires idle ones
/// (distribution after a week), and left-overs older than [`CARRY_FOR`] are never used.
#[derive(Default)]
pub struct Sessions {
    /// Claimed from the cache: ready to PUT into (with when each was opened).
    carried: std::sync::Mutex<Vec<OpenSession>>,
    /// Opened by this build (the POSTs, in the background).
    started: std::sync::Mutex<Vec<tokio::task::JoinHandle<Option<OpenSession>>>>,
    /// Where the sessions left over go, for the next build.
    carry: Option<(Cache, Digest)>,
}

/// How many upload sessions a build leaves open for the next one, at most (a new application
/// layer and its config).
pub const MAX_CARRIED: usize = 2;

/// Sessions carried longer than this are not used (and not carried further).
pub const CARRY_FOR: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct OpenSession {
    /// Seconds since the Unix epoch.
    opened: u64,
    url: String,
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Sessions {
    fn key(target: &Reference) -> Digest {
        Digest::of(
            format!(
                "vxbuild upload sessions v1\n{}\n{}",
                target.registry, target.repository
            )
            .as_bytes(),
        )
    }

    /// Sessions for `n` new blobs of a push to `target`: those an earlier build left in `cache`
    /// first, the rest opened now in the background, with `n` more for the next build.
    pub fn start(
        client: &std::sync::Arc<RegistryClient>,
        cache: &Cache,
        target: &Reference,
        n: usize,
    ) -> Self {
        let key = Self::key(target);
        let now = now_secs();
        let mut carried: Vec<OpenSession> =
            cache.take_record("pushed-v1", &key).unwrap_or_default();
        carried.retain(|s| now.saturating_sub(s.opened) < CARRY_FOR.as_secs());
        let n = n.min(MAX_CARRIED);
        let started = (0..(2 * n).saturating_sub(carried.len()))
            .map(|_| {
                let (c, t) = (client.clone(), target.clone());
                tokio::spawn(async move {
                    let url = c.start_upload(&t).await.ok()?;
                    Some(OpenSession {
                        opened: now_secs(),
                        url: url.into(),
                    })
                })
            })
            .collect();
        Sessions {
            carried: std::sync::Mutex::new(carried),
            started: std::sync::Mutex::new(started),
            carry: Some((cache.clone(), key)),
        }
    }

    /// A session for one upload, and whether an earlier build opened it.
    async fn take(&self) -> Option<(url::Url, bool)> {
        while let Some(s) = self.carried.lock().expect("sessions lock").pop() {
            if let Ok(url) = s.url.parse() {
                return Some((url, true));
            }
        }
        let next = self.started.lock().expect("sessions lock").pop()?;
        let url = next.await.ok().flatten()?.url.parse().ok()?;
        Some((url, false))
    }

    /// Leave the sessions not used in the cache for the next build (those still opening get a
    /// moment: they started with the push, so they have almost always answered by its end).
    async fn carry_over(&self) -> Result<(), crate::cache::CacheError> {
        let Some((cache, key)) = &self.carry else {
            return Ok(());
        };
        let mut left: Vec<OpenSession> =
            std::mem::take(&mut *self.carried.lock().expect("sessions lock"));
        let started = std::mem::take(&mut *self.started.lock().expect("sessions lock"));
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(1);
        for handle in started {
            let abort = handle.abort_handle();
            match tokio::time::timeout_at(deadline, handle).await {
                Ok(Ok(Some(s))) => left.push(s),
                Ok(_) => {}
                Err(_) => abort.abort(),
            }
        }
        if left.is_empty() {
            return Ok(());
        }
        // The newest are kept: they have the longest to live.
        left.sort_by_key(|s| std::cmp::Reverse(s.opened));
        left.truncate(MAX_CARRIED);
        let (cache, key) = (cache.clone(), key.clone());
        tokio::task::spawn_blocking(move || cache.put_record("pushed-v1", &key, &left))
            .await
            .unwrap_or(Ok(()))
    }
}

fn short(d: &Digest) -> String {
    format!("sha256:{}", &d.hex()[..12])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(cache: &Cache, target: &Reference, ages: &[u64]) {
        let now = now_secs();
        let open: Vec<OpenSession> = ages
            .iter()
            .enumerate()
            .map(|(i, age)| OpenSession {
                opened: now - age,
                url: format!("http://127.0.0.1:1/v2/team/trainer/blobs/uploads/{i}?_state=x"),
            })
            .collect();
        cache
            .put_record("pushed-v1", &Sessions::key(target), &open)
            .unwrap();
    }

    /// No registry is reached: every session asked for here is one carried in the cache.
    #[tokio::test]
    async fn carried_sessions_are_used_once_and_never_when_too_old() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let client = std::sync::Arc::new(RegistryClient::new(Default::default()).unwrap());
        let target: Reference = "127.0.0.1:1/team/trainer:v1".parse().unwrap();

        // One fresh, one past CARRY_FOR: only the fresh one is given, and nothing is opened
        // (n = 0) beyond what the cache had.
        record(&cache, &target, &[60, CARRY_FOR.as_secs() + 60]);
        let s = Sessions::start(&client, &cache, &target, 0);
        let (url, carried) = s.take().await.unwrap();
        assert!(carried);
        assert!(url.path().ends_with("/uploads/0"), "{url}");
        assert!(s.take().await.is_none());
        // Taken: another build on this cache finds none.
        let other = Sessions::start(&client, &cache, &target, 0);
        assert!(other.take().await.is_none());

        // Left over: the newest MAX_CARRIED are kept for the next build, for this repository only.
        record(&cache, &target, &[30, 20, 10]);
        let s = Sessions::start(&client, &cache, &target, 0);
        s.carry_over().await.unwrap();
        let kept: Vec<OpenSession> = cache
            .get_record("pushed-v1", &Sessions::key(&target))
            .unwrap();
        let ids: Vec<&str> = kept
            .iter()
            .map(|o| o.url.rsplit('/').next().unwrap())
            .collect();
        assert_eq!(ids, ["2?_state=x", "1?_state=x"]);
        let elsewhere: Reference = "127.0.0.1:1/team/other:v1".parse().unwrap();
        let s = Sessions::start(&client, &cache, &elsewhere, 0);
        assert!(s.take().await.is_none());
    }
}
