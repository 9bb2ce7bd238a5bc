//! vxbuild: daemonless, rootless, reproducible OCI images for Python training code.
//!
//! One build is a pipeline of stages, each a module with one typed input and one typed output:
//!
//! ```text
//! flags + vxbuild.toml ─► plan::plan ─► base::resolve ─► python (probe, resolve, fetch, install)
//!   ─► layer::write_layer ─► image::assemble ─► publish (registry push, OCI layout, OCI archive)
//! ```
//!
//! [`build`] runs them in order; read it top to bottom to follow one build.

pub mod base;
pub mod cache;
pub mod cli;
pub mod compress;
pub mod deps;
pub mod digest;
pub mod image;
pub mod layer;
pub mod lock;
pub mod oci;
pub mod plan;
pub mod publish;
pub mod python;
pub mod reference;
pub mod registry;
pub mod report;
pub mod sandbox;
pub mod scratch;
pub mod source;
pub mod unpack;

use crate::cache::Cache;
use crate::digest::Digest;
use crate::image::{BuiltImage, Contract, NewLayer};
use crate::layer::{EntryKind, LayerBlob, LayerEntry, LayerOptions};
use crate::oci::Descriptor;
use crate::plan::{BuildPlan, LocalOutput};
use crate::python::PinnedWheel;
use crate::registry::{ClientOptions, RegistryClient};
use crate::report::Reporter;
use crate::source::LeftOut;

/// Why a build failed: the stage that failed, with its own error as the source.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("failed to open the cache at {}", path.display())]
    Cache {
        path: std::path::PathBuf,
        #[source]
        source: cache::CacheError,
    },
    #[error("failed to set up the registry client")]
    Client(#[source] registry::RegistryError),
    #[error("failed to resolve the base image {reference}")]
    Base {
        reference: String,
        #[source]
        source: Box<base::BaseError>,
    },
    #[error("failed to collect the project's files")]
    Sources(#[source] source::SourceError),
    #[error(
        "--script: {script} is left out of the image by an ignore file (.dockerignore, .gcloudignore or .vxbuildignore) or a size limit; the image would not run"
    )]
    ScriptLeftOut { script: String },
    #[error("failed to install the Python dependencies")]
    Python(#[source] python::PythonError),
    #[error("failed to write the {what} layer")]
    Layer {
        what: &'static str,
        #[source]
        source: layer::LayerError,
    },
    #[error("failed to assemble the image")]
    Image(#[source] image::ImageError),
    #[error("failed to push to {reference}")]
    Push {
        reference: String,
        #[source]
        source: publish::registry::PushError,
    },
    #[error("failed to write {output}")]
    Output {
        output: String,
        #[source]
        source: publish::layout::LayoutError,
    },
    #[error(transparent)]
    Lock(lock::LockError),
    #[error("failed to prepare a scratch folder in the cache")]
    Scratch(#[source] std::io::Error),
}

/// What a build produced.
#[derive(Debug)]
pub struct BuildOutcome {
    pub manifest_digest: Digest,
    /// The one line for stdout: the pushed reference pinned by digest, or the first local output's.
    pub reference: String,
    pub image: BuiltImage,
    pub wheels: Vec<PinnedWheel>,
    pub left_out: Vec<LeftOut>,
    pub push_stats: Option<publish::registry::PushStats>,
}

/// Run one build: the stages in order.
pub async fn build(
    plan: &BuildPlan,
    reporter: std::sync::Arc<dyn Reporter>,
) -> Result<BuildOutcome, BuildError> {
    let trace = reporter.wants_debug().then(|| reporter.clone());
    let reporter: &dyn Reporter = &*reporter;
    let cache = Cache::open(&plan.cache_dir).map_err(|source| BuildError::Cache {
        path: plan.cache_dir.clone(),
        source,
    })?;
    let layer_opts = LayerOptions {
        mtime: plan.source_date_epoch,
        compression: plan.compression,
    };

    // The project's files first: cheap, and a bad project fails before any download.
    let sources = collect_sources(plan).await?;
    for l in &sources.left_out {
        reporter.warn(&l.describe());
    }

    // Stage 1: the base.
    let hosts_key = Digest::of(b"vxbuild host schemes v1");
    let known_schemes: Vec<(String, bool)> =
        cache.get_record("hosts-v1", &hosts_key).unwrap_or_default();
    let client = std::sync::Arc::new(
        RegistryClient::new(ClientOptions {
            insecure_registries: plan.insecure_registries.clone(),
            docker_config: None,
            max_concurrent: plan.jobs,
            trace: trace.clone(),
            known_schemes: known_schemes.clone(),
        })
        .map_err(BuildError::Client)?,
    );
    let base_err = |source| BuildError::Base {
        reference: plan.base.to_string(),
        source: Box::new(source),
    };
    // The lock: reused when it matches its inputs; a plain build never moves a locked base.
    let lock_state = LockState::load(plan)?;
    let base = resolve_base(
        plan,
        &client,
        &cache,
        lock_state.existing.as_ref(),
        false,
        reporter,
    )
    .await
    .map_err(base_err)?;
    let tag_watch = lock_state
        .existing
        .as_ref()
        .and_then(|l| l.base_for(&plan.base.to_string(), &plan.platform.to_string()))
        .and_then(|_| watch_base_tag(plan, &client, &base));

    // The base's root filesystem: the sandbox's root, unpacked only when pip must run.
    let layer_paths = base::fetch_layers(&client, &base, &cache, plan.jobs, reporter)
        .await
        .map_err(base_err)?;
    let rootfs = base::Rootfs::new(&base, layer_paths, &cache, plan.scratch);

    // Stage 2: dependencies, installed by the base's own python in the sandbox.
    let mut new_layers = Vec::new();
    let mut wheels = Vec::new();
    if !plan.requirements.is_empty() {
        let locked = match lock_state.fresh() {
            Some(lock) => {
                reporter.info("Using vxbuild.lock");
                Some(lock::resolution_of(lock, plan, &cache).map_err(BuildError::Lock)?)
            }
            None => None,
        };
        let (layers, pinned) = deps::dependency_layers(
            plan,
            &cache,
            &base,
            locked,
            || async { rootfs.path(reporter).await.map_err(base_err) },
            reporter,
        )
        .await?;
        new_layers.extend(layers);
        wheels = pinned;
    }

    // Stage 3: the application layer (with /home when the base lacks it, as autopackaging's
    // `mkdir -p /home`).
    let home_missing = rootfs.home_missing(reporter).await.map_err(base_err)?;
    drop(rootfs);
    let mut entries: Vec<LayerEntry> = vec![LayerEntry {
        path: "usr/app".into(),
        mode: 0o777,
        kind: EntryKind::Dir,
    }];
    if home_missing {
        entries.push(LayerEntry {
            path: "home".into(),
            mode: 0o777,
            kind: EntryKind::Dir,
        });
    }
    let source_bytes: u64 = sources
        .entries
        .iter()
        .map(|e| match e.kind {
            EntryKind::File { size, .. } => size,
            _ => 0,
        })
        .sum();
    entries.extend(sources.entries.into_iter().map(|e| LayerEntry {
        path: format!("usr/app/{}", e.path),
        ..e
    }));
    // Keyed by what goes in: a build with the same files reuses the blob without reading them.
    let app_key = Digest::of(
        format!(
            "vxbuild application layer v2\n{}\n{}\nhome {home_missing}\nmtime {}\ncompression {}\n",
            layer::FORMAT,
            sources.content_hash,
            plan.source_date_epoch,
            plan.compression.name()
        )
        .as_bytes(),
    );
    let mut sessions = publish::registry::Sessions::default();
    let app = match layer::cached(&cache, &app_key) {
        Some(blob) => blob,
        None => {
            // A new application layer means a new config too: their upload sessions are carried
            // from the last build or opened now, so no round trip waits for them.
            if let (Some(target), true) = (&plan.target, plan.push) {
                // The layer is uploaded without asking only when small; its files' size says.
                let small = source_bytes < publish::registry::NO_HEAD_BELOW / 2;
                sessions =
                    publish::registry::Sessions::start(&client, &cache, target, 1 + small as usize);
            }
            let blob = write_layer_blocking(entries, layer_opts, cache.clone())
                .await
                .map_err(|source| BuildError::Layer {
                    what: "application",
                    source,
                })?;
            layer::remember(&cache, &app_key, &blob, reporter);
            blob
        }
    };
    new_layers.push(NewLayer {
        descriptor: Descriptor::new(app.media_type, app.digest.clone(), app.size),
        diff_id: app.diff_id,
        created_by: "vxbuild: COPY . /usr/app".into(),
    });

    // Stage 4: config and manifest.
    let parts = image::BaseParts {
        config: &base.config,
        layers: &base.manifest.layers,
        name: &base.name,
        manifest_digest: &base.manifest_digest,
    };
    let contract = Contract::autopackaging(plan.entrypoint.clone());
    let image = image::assemble(
        &parts,
        &new_layers,
        &contract,
        &image::rfc3339(plan.source_date_epoch),
    )
    .map_err(BuildError::Image)?;

    // Stage 5: publish (fetch_layers put the base's layers in the cache).
    for out in &plan.outputs {
        let res = match out {
            LocalOutput::Layout { dir, tag } => {
                publish::layout::write_layout(&image, &cache, dir, tag)
            }
            LocalOutput::Archive { file, tag } => {
                publish::layout::write_archive(&image, &cache, file, tag)
            }
        };
        res.map_err(|source| BuildError::Output {
            output: out.display_ref(),
            source,
        })?;
        reporter.info(&format!("Wrote {}", out.display_ref()));
    }
    let mut push_stats = None;
    let reference = match (&plan.target, plan.push) {
        (Some(target), true) => {
            reporter.info(&format!("Pushing {target}"));
            let (pinned, stats) = publish::registry::push(
                &client, &image, target, &base, &cache, plan.jobs, sessions, reporter,
            )
            .await
            .map_err(|source| BuildError::Push {
                reference: target.to_string(),
                source,
            })?;
            push_stats = Some(stats);
            pinned.to_string()
        }
        _ => format!(
            "{}@{}",
            plan.outputs
                .first()
                .map(LocalOutput::display_ref)
                .unwrap_or_default(),
            image.manifest_digest
        ),
    };
    lock_state.write_if_needed(plan, &base, &wheels, reporter)?;
    report_base_tag(tag_watch, reporter).await;
    let mut learned = client.learned_schemes();
    if learned != known_schemes {
        // Keep what other builds learned about other hosts.
        for k in known_schemes {
            if !learned.iter().any(|(h, _)| *h == k.0) {
                learned.push(k);
            }
        }
        learned.sort();
        let _ = cache.put_record("hosts-v1", &hosts_key, &learned);
    }
    Ok(BuildOutcome {
        manifest_digest: image.manifest_digest.clone(),
        reference,
        image,
        wheels,
        left_out: sources.left_out,
        push_stats,
    })
}

/// `vxbuild lock`: resolve the base and the dependencies and write vxbuild.lock. An up-to-date lock
/// is left alone unless `upgrade`, which re-resolves everything and moves the base to its tag's
/// current digest. Returns the lock's path.
pub async fn lock(
    plan: &BuildPlan,
    upgrade: bool,
    reporter: std::sync::Arc<dyn Reporter>,
) -> Result<std::path::PathBuf, BuildError> {
    let trace = reporter.wants_debug().then(|| reporter.clone());
    let reporter: &dyn Reporter = &*reporter;
    let cache = Cache::open(&plan.cache_dir).map_err(|source| BuildError::Cache {
        path: plan.cache_dir.clone(),
        source,
    })?;
    let client = RegistryClient::new(ClientOptions {
        insecure_registries: plan.insecure_registries.clone(),
        docker_config: None,
        max_concurrent: plan.jobs,
        trace: trace.clone(),
        known_schemes: Vec::new(),
    })
    .map_err(BuildError::Client)?;
    let base_err = |source| BuildError::Base {
        reference: plan.base.to_string(),
        source: Box::new(source),
    };
    let auto = BuildPlan {
        lock_mode: plan::LockMode::Auto,
        ..plan.clone()
    };
    let state = LockState::load(&auto)?;
    if state.fresh().is_some() && !upgrade {
        reporter.info("vxbuild.lock is up to date");
        return Ok(state.path);
    }
    let base = resolve_base(
        plan,
        &client,
        &cache,
        state.existing.as_ref(),
        upgrade,
        reporter,
    )
    .await
    .map_err(base_err)?;
    let mut wheels = Vec::new();
    if !plan.requirements.is_empty() {
        let layer_paths = base::fetch_layers(&client, &base, &cache, plan.jobs, reporter)
            .await
            .map_err(base_err)?;
        let rootfs = base::Rootfs::new(&base, layer_paths, &cache, plan.scratch);
        let root = rootfs.path(reporter).await.map_err(base_err)?;
        let env = deps::python_env(plan, &cache, &base, &root, reporter).await?;
        wheels = env.resolve(plan, &cache, reporter).await?.wheels;
    }
    let new = lock_file_for(plan, &state.inputs, &base, &wheels);
    lock::write(&state.path, &new).map_err(BuildError::Lock)?;
    reporter.info(&format!(
        "Wrote {} ({} package(s), base {})",
        state.path.display(),
        wheels.len(),
        base.manifest_digest
    ));
    Ok(state.path)
}

async fn collect_sources(plan: &BuildPlan) -> Result<source::SourceSet, BuildError> {
    let opts = source::SourceOptions {
        max_file_size: plan.max_file_size,
        exclude: plan.source_excludes.clone(),
    };
    let dir = plan.project_dir.clone();
    let extra = plan.extra_dirs.clone();
    let mut set =
        tokio::task::spawn_blocking(move || -> Result<source::SourceSet, source::SourceError> {
            let mut set = source::collect(&dir, &opts)?;
            for (abs, rel) in &extra {
                let more = source::collect(abs, &opts)?;
                merge_under(&mut set, rel, more);
            }
            Ok(set)
        })
        .await
        .expect("source task")
        .map_err(BuildError::Sources)?;
    if let Some(script) = &plan.script {
        let script = script.trim_start_matches("./");
        if !set.entries.iter().any(|e| e.path == script) {
            return Err(BuildError::ScriptLeftOut {
                script: script.into(),
            });
        }
    }
    set.entries.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(set)
}

async fn write_layer_blocking(
    entries: Vec<LayerEntry>,
    opts: LayerOptions,
    cache: Cache,
) -> Result<LayerBlob, layer::LayerError> {
    tokio::task::spawn_blocking(move || layer::write_layer(entries, &opts, &cache))
        .await
        .expect("layer task")
}

/// The HTTP client for package downloads: system trust roots, proxies from the environment.
pub fn http_client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .user_agent(concat!("vxbuild/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// An [`http_client`] made on first use: making one loads the system's trust roots (a few ms),
/// which a build whose wheels are all cached never needs.
#[derive(Debug, Default, Clone)]
pub struct LazyHttp(std::sync::Arc<std::sync::OnceLock<reqwest::Client>>);

impl LazyHttp {
    pub fn get(&self) -> Result<&reqwest::Client, reqwest::Error> {
        if let Some(c) = self.0.get() {
            return Ok(c);
        }
        let c = http_client()?;
        Ok(self.0.get_or_init(|| c))
    }
}

/// Add the files of an extra folder under `rel` (its path relative to the project), keeping what
/// the project already had at the same paths.
fn merge_under(set: &mut source::SourceSet, rel: &str, more: source::SourceSet) {
    let rel = rel.trim_matches('/');
    let mut have: std::collections::BTreeSet<String> =
        set.entries.iter().map(|e| e.path.clone()).collect();
    let mut prefix = String::new();
    for part in rel.split('/') {
        prefix = if prefix.is_empty() {
            part.to_string()
        } else {
            format!("{prefix}/{part}")
        };
        if have.insert(prefix.clone()) {
            set.entries.push(LayerEntry {
                path: prefix.clone(),
                mode: 0o755,
                kind: EntryKind::Dir,
            });
        }
    }
    for e in more.entries {
        let path = format!("{rel}/{}", e.path);
        if have.insert(path.clone()) {
            set.entries.push(LayerEntry { path, ..e });
        }
    }
    for l in more.left_out {
        set.left_out.push(LeftOut {
            path: format!("{rel}/{}", l.path),
            ..l
        });
    }
    let mut h = Vec::new();
    for d in [set.content_hash.as_str(), rel, more.content_hash.as_str()] {
        h.extend_from_slice(d.as_bytes());
        h.push(0);
    }
    set.content_hash = Digest::of(&h);
}

/// The lock as found at the start of a build, and whether it matches the plan.
struct LockState {
    path: std::path::PathBuf,
    mode: plan::LockMode,
    inputs: lock::LockInputs,
    existing: Option<lock::LockFile>,
    stale: Vec<String>,
}

impl LockState {
    fn load(plan: &BuildPlan) -> Result<Self, BuildError> {
        let path = plan.project_dir.join(lock::LOCK_FILE);
        let inputs = lock::inputs_of(plan).map_err(BuildError::Lock)?;
        let existing = match plan.lock_mode {
            plan::LockMode::Off => None,
            _ => lock::read(&path).map_err(BuildError::Lock)?,
        };
        let stale = existing
            .as_ref()
            .map(|l| l.changes(&inputs))
            .unwrap_or_default();
        if plan.lock_mode == plan::LockMode::Locked {
            match &existing {
                None => return Err(BuildError::Lock(lock::LockError::Missing { path })),
                Some(_) if !stale.is_empty() => {
                    return Err(BuildError::Lock(lock::LockError::Stale {
                        path,
                        changes: stale.join("; "),
                    }));
                }
                Some(_) => {}
            }
        }
        Ok(LockState {
            path,
            mode: plan.lock_mode,
            inputs,
            existing,
            stale,
        })
    }

    /// The lock, when it can be used as it is.
    fn fresh(&self) -> Option<&lock::LockFile> {
        self.existing.as_ref().filter(|_| self.stale.is_empty())
    }

    /// Write the lock after a successful build when there was none or it was stale.
    fn write_if_needed(
        &self,
        plan: &BuildPlan,
        base: &base::BaseImage,
        wheels: &[PinnedWheel],
        reporter: &dyn Reporter,
    ) -> Result<(), BuildError> {
        if self.mode == plan::LockMode::Off || self.fresh().is_some() {
            return Ok(());
        }
        if self.existing.is_some() {
            reporter.info(&format!(
                "vxbuild.lock was stale ({}); re-locked",
                self.stale.join("; ")
            ));
        }
        let new = lock_file_for(plan, &self.inputs, base, wheels);
        lock::write(&self.path, &new).map_err(BuildError::Lock)?;
        reporter.info(&format!("Wrote {}", self.path.display()));
        Ok(())
    }
}

fn lock_file_for(
    plan: &BuildPlan,
    inputs: &lock::LockInputs,
    base: &base::BaseImage,
    wheels: &[PinnedWheel],
) -> lock::LockFile {
    lock::LockFile {
        version: lock::LOCK_VERSION,
        inputs: inputs.clone(),
        base: vec![lock::LockedBase {
            reference: plan.base.to_string(),
            platform: plan.platform.to_string(),
            reference_digest: base.reference_digest.to_string(),
            digest: base.manifest_digest.to_string(),
        }],
        package: lock::packages_of(
            &python::Resolution {
                wheels: wheels.to_vec(),
            },
            plan,
        ),
    }
}

/// The base: pinned to the locked digest when a lock names this reference (unless `upgrade`),
/// else resolved from the registry. Says when the tag has moved since it was locked.
async fn resolve_base(
    plan: &BuildPlan,
    client: &RegistryClient,
    cache: &Cache,
    existing: Option<&lock::LockFile>,
    upgrade: bool,
    reporter: &dyn Reporter,
) -> Result<base::BaseImage, base::BaseError> {
    let locked = existing
        .and_then(|l| l.base_for(&plan.base.to_string(), &plan.platform.to_string()))
        .filter(|_| !upgrade && plan.base.digest.is_none());
    let Some(locked) = locked else {
        reporter.info(&format!("Resolving {}", plan.base));
        return base::resolve(client, &plan.base, &plan.platform, cache).await;
    };
    let (Ok(digest), Ok(reference_digest)) = (
        locked.digest.parse::<Digest>(),
        locked.reference_digest.parse::<Digest>(),
    ) else {
        reporter.info(&format!(
            "Resolving {} (the locked digest is not valid)",
            plan.base
        ));
        return base::resolve(client, &plan.base, &plan.platform, cache).await;
    };
    let mut base = base::resolve(
        client,
        &plan.base.with_digest(digest),
        &plan.platform,
        cache,
    )
    .await?;
    base.reference_digest = reference_digest;
    Ok(base)
}

/// Whether the base's tag has moved since the lock pinned it: asked in the background while the
/// build goes on (a moved tag is worth a word, never a silent change), and only reported if the
/// answer came before the build ended; an unreachable registry is no error here.
fn watch_base_tag(
    plan: &BuildPlan,
    client: &std::sync::Arc<RegistryClient>,
    base: &base::BaseImage,
) -> Option<tokio::task::JoinHandle<Option<String>>> {
    if plan.base.digest.is_some() {
        return None;
    }
    let (client, tag, locked) = (
        client.clone(),
        plan.base.clone(),
        base.reference_digest.clone(),
    );
    Some(tokio::spawn(async move {
        let current = client.get_manifest(&tag).await.ok()?;
        (current.digest != locked).then(|| {
            format!(
                "{tag} has moved to {} since vxbuild.lock was written; the build keeps {locked} — run `vxbuild lock --upgrade` to move",
                current.digest
            )
        })
    }))
}

/// The tag watcher's warning, if it answers by now or within a moment.
async fn report_base_tag(
    watch: Option<tokio::task::JoinHandle<Option<String>>>,
    reporter: &dyn Reporter,
) {
    let Some(w) = watch else { return };
    // A short grace for a registry a little slower than the build; never more.
    let abort = w.abort_handle();
    match tokio::time::timeout(std::time::Duration::from_millis(100), w).await {
        Ok(Ok(Some(warning))) => reporter.warn(&warning),
        Ok(_) => {}
        Err(_) => abort.abort(),
    }
}
