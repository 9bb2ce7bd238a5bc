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
pub mod digest;
pub mod image;
pub mod layer;
pub mod oci;
pub mod plan;
pub mod publish;
pub mod python;
pub mod reference;
pub mod registry;
pub mod report;
pub mod sandbox;
pub mod source;
pub mod unpack;

use std::path::Path;

use crate::cache::Cache;
use crate::digest::Digest;
use crate::image::{BuiltImage, Contract, NewLayer};
use crate::layer::{EntryKind, LayerBlob, LayerEntry, LayerOptions};
use crate::oci::Descriptor;
use crate::plan::{BuildPlan, LocalOutput};
use crate::python::{PinnedWheel, PipRunner};
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
        source: base::BaseError,
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
pub async fn build(plan: &BuildPlan, reporter: &dyn Reporter) -> Result<BuildOutcome, BuildError> {
    let cache = Cache::open(&plan.cache_dir).map_err(|source| BuildError::Cache {
        path: plan.cache_dir.clone(),
        source,
    })?;
    let layer_opts = LayerOptions {
        mtime: plan.source_date_epoch,
    };

    // The project's files first: cheap, and a bad project fails before any download.
    let sources = collect_sources(plan).await?;
    for l in &sources.left_out {
        reporter.warn(&l.describe());
    }

    // Stage 1: the base.
    let client = RegistryClient::new(ClientOptions {
        insecure_registries: plan.insecure_registries.clone(),
        docker_config: None,
        max_concurrent: plan.jobs,
    })
    .map_err(BuildError::Client)?;
    let base_err = |source| BuildError::Base {
        reference: plan.base.to_string(),
        source,
    };
    reporter.info(&format!("Resolving {}", plan.base));
    let base = base::resolve(&client, &plan.base, &plan.platform, &cache)
        .await
        .map_err(base_err)?;

    // Stage 2: dependencies, installed by the base's own python in the sandbox.
    let mut new_layers = Vec::new();
    let mut wheels = Vec::new();
    let mut home_missing = false;
    if !plan.requirements.is_empty() {
        let layer_paths = base::fetch_layers(&client, &base, &cache, plan.jobs, reporter)
            .await
            .map_err(base_err)?;
        let rootfs = base::rootfs(&base, layer_paths, &cache, reporter)
            .await
            .map_err(base_err)?;
        home_missing = std::fs::symlink_metadata(rootfs.join("home")).is_err();
        let (layer, pinned) = install_dependencies(plan, &cache, &base, &rootfs, reporter).await?;
        wheels = pinned;
        if let Some(layer) = layer {
            new_layers.push(NewLayer {
                descriptor: Descriptor::new(layer.media_type, layer.digest.clone(), layer.size),
                diff_id: layer.diff_id,
                created_by: format!(
                    "vxbuild: pip install {} wheel(s): {}",
                    wheels.len(),
                    wheel_summary(&wheels)
                ),
            });
        }
    }

    // Stage 3: the application layer.
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
    entries.extend(sources.entries.into_iter().map(|e| LayerEntry {
        path: format!("usr/app/{}", e.path),
        ..e
    }));
    let app = write_layer_blocking(entries, layer_opts, cache.clone())
        .await
        .map_err(|source| BuildError::Layer {
            what: "application",
            source,
        })?;
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

    // Stage 5: publish. Base layers must be in the cache for local outputs and cross-registry pushes.
    if !plan.outputs.is_empty() {
        base::fetch_layers(&client, &base, &cache, plan.jobs, reporter)
            .await
            .map_err(base_err)?;
    }
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
                &client, &image, target, &base, &cache, plan.jobs, reporter,
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
    Ok(BuildOutcome {
        manifest_digest: image.manifest_digest.clone(),
        reference,
        image,
        wheels,
        left_out: sources.left_out,
        push_stats,
    })
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

async fn install_dependencies(
    plan: &BuildPlan,
    cache: &Cache,
    base: &base::BaseImage,
    rootfs: &Path,
    reporter: &dyn Reporter,
) -> Result<(Option<LayerBlob>, Vec<PinnedWheel>), BuildError> {
    let py = BuildError::Python;
    let sandbox = sandbox::Sandbox::new(rootfs).map_err(|e| py(e.into()))?;
    let interp = python::probe(&sandbox, &base.path_env())
        .await
        .map_err(py)?;
    let http = http_client().map_err(|e| {
        py(python::PythonError::Download {
            url: "(client setup)".into(),
            source: e,
        })
    })?;
    let runner = if interp.has_usable_pip() {
        PipRunner::Base
    } else {
        reporter.info(&format!(
            "The base's Python has {}, which cannot write resolution reports; using a pip wheel for Python {}",
            interp.pip_description(),
            interp.version_string()
        ));
        python::bootstrap::bootstrap_pip(&interp, &plan.pip, cache, &http)
            .await
            .map_err(|e| py(e.into()))?
    };
    reporter.info(&format!(
        "Resolving dependencies with Python {} ({})",
        interp.version_string(),
        interp.executable
    ));
    let resolution = python::resolve(
        &sandbox,
        &interp,
        &runner,
        &plan.requirements,
        &plan.pip,
        cache,
    )
    .await
    .map_err(py)?;
    if resolution.wheels.is_empty() {
        return Ok((None, Vec::new()));
    }
    let paths = python::fetch_wheels(&resolution, cache, &http, plan.jobs, reporter)
        .await
        .map_err(py)?;
    reporter.info(&format!("Installing {} wheel(s)", resolution.wheels.len()));
    let scratch = cache.tempdir("install-").map_err(BuildError::Scratch)?;
    let staging = scratch.path().join("staging");
    std::fs::create_dir(&staging).map_err(BuildError::Scratch)?;
    python::install(
        &sandbox,
        &interp,
        &runner,
        &resolution,
        &paths,
        &staging,
        scratch.path(),
    )
    .await
    .map_err(py)?;
    let opts = LayerOptions {
        mtime: plan.source_date_epoch,
    };
    let c = cache.clone();
    let layer = tokio::task::spawn_blocking(move || {
        let entries = layer::entries_from_tree(&staging, "")?;
        layer::write_layer(entries, &opts, &c)
    })
    .await
    .expect("layer task")
    .map_err(|source| BuildError::Layer {
        what: "dependencies",
        source,
    })?;
    drop(scratch);
    Ok((Some(layer), resolution.wheels))
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

fn wheel_summary(wheels: &[PinnedWheel]) -> String {
    let names: Vec<String> = wheels
        .iter()
        .take(8)
        .map(|w| format!("{}=={}", w.name, w.version))
        .collect();
    let more = wheels.len().saturating_sub(8);
    if more > 0 {
        format!("{} and {more} more", names.join(" "))
    } else {
        names.join(" ")
    }
}

/// The HTTP client for package downloads: system trust roots, proxies from the environment.
pub fn http_client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .user_agent(concat!("vxbuild/", env!("CARGO_PKG_VERSION")))
        .build()
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
