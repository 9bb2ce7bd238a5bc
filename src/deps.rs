//! Stages 2 and 3 for the dependencies: the locked wheels become per-package layers.
//!
//! - **Grouping** ([`group_layers`]): a distribution whose wheel is at least [`OWN_LAYER_MIN`]
//!   gets a layer of its own; smaller ones share layers, cut where a name's hash says so (content
//!   defined, so adding or bumping one small package changes one shared layer, not all of them);
//!   at most [`MAX_DEP_LAYERS`] in all. Order and grouping depend only on the locked set (names,
//!   versions, wheel hashes and sizes), never on the cache or the machine.
//! - **Layer cache**: each layer has a key — a hash of its wheels (name, version, sha256, whether
//!   requested or direct, which shows in the installed metadata), the base's interpreter and
//!   install scheme, the pip that installs, `SOURCE_DATE_EPOCH`, `--compile-bytecode` and the
//!   layer format. The cache maps a key to the blob it gave (`layers-v1`). A layer found there is
//!   used as it is: no pip, no compression. The same wheel on the same base gives the same layer
//!   blob in every project.
//! - **Install**: the wheels of the layers not found are installed by pip in the sandbox — one run
//!   per core, each into its own staging root, balanced by wheel bytes — split by each
//!   distribution's RECORD ([`crate::python::split`]) and written as layers, each bucket's as soon
//!   as its pip is done.

use std::path::Path;
use std::sync::Arc;

use crate::BuildError;
use crate::base::BaseImage;
use crate::cache::Cache;
use crate::digest::Digest;
use crate::image::NewLayer;
use crate::layer::{self, LayerBlob, LayerEntry, LayerOptions};
use crate::oci::Descriptor;
use crate::plan::BuildPlan;
use crate::python::{self, Interpreter, PinnedWheel, PipRunner, Resolution, normalize_name};
use crate::report::Reporter;
use crate::sandbox::Sandbox;

/// A wheel at least this large (compressed) gets a layer of its own.
pub const OWN_LAYER_MIN: u64 = 1 << 20;
/// The most dependency layers an image gets.
pub const MAX_DEP_LAYERS: usize = 100;
/// A shared layer holds at most this many distributions.
const MAX_GROUP: usize = 16;
/// Version of the layer key and of how a layer is made from installed files; bump it when either
/// changes, so old cache entries are not used (the bytes' own format is [`layer::FORMAT`]).
const LAYER_FORMAT: &str = "vxbuild dependency layer v2";
/// Version of the probe record.
const PROBE_FORMAT: &str = "vxbuild probe v1";

/// Which wheels go into which layer: indices into the wheels given, each group sorted by name, the
/// groups in the order of their first name.
pub fn group_layers(wheels: &[(String, u64)]) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..wheels.len()).collect();
    order.sort_by(|&a, &b| wheels[a].0.cmp(&wheels[b].0));
    // The largest distributions get layers of their own, leaving room for the shared ones.
    let mut big: Vec<usize> = order
        .iter()
        .copied()
        .filter(|&i| wheels[i].1 >= OWN_LAYER_MIN)
        .collect();
    let room = MAX_DEP_LAYERS - MAX_DEP_LAYERS / 10;
    if big.len() > room {
        big.sort_by(|&a, &b| {
            wheels[b]
                .1
                .cmp(&wheels[a].1)
                .then(wheels[a].0.cmp(&wheels[b].0))
        });
        big.truncate(room);
    }
    let mut groups: Vec<Vec<usize>> = big.iter().map(|&i| vec![i]).collect();
    let mut current = Vec::new();
    for &i in order.iter().filter(|i| !big.contains(i)) {
        current.push(i);
        // A cut after names whose hash is 0 mod 4: about four to a layer, and the cuts stay where
        // they are when a package is added, removed or bumped elsewhere.
        let hash = Digest::of(wheels[i].0.as_bytes());
        let cut = u8::from_str_radix(&hash.hex()[..2], 16)
            .unwrap_or(0)
            .is_multiple_of(4);
        if cut || current.len() == MAX_GROUP {
            groups.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        groups.push(current);
    }
    groups.sort_by(|a, b| wheels[a[0]].0.cmp(&wheels[b[0]].0));
    // Over the limit (only with hundreds of small packages): merge neighbouring shared layers.
    while groups.len() > MAX_DEP_LAYERS {
        let i = (0..groups.len() - 1)
            .find(|&i| !big.contains(&groups[i][0]) && !big.contains(&groups[i + 1][0]))
            .unwrap_or(groups.len() - 2);
        let next = groups.remove(i + 1);
        groups[i].extend(next);
    }
    groups
}

/// What the pip that installs and the interpreter it installs for are: part of every layer key.
#[derive(Debug, Clone)]
struct InstallScheme {
    fingerprint: String,
}

impl InstallScheme {
    /// `None` when the install cannot be cached (a bootstrapped pip: which wheel it is depends on
    /// the index at the time).
    fn of(interp: &Interpreter, runner: &PipRunner) -> Option<Self> {
        let PipRunner::Base = runner else {
            return None;
        };
        Some(InstallScheme {
            fingerprint: serde_json::to_string(&(
                &interp.executable,
                interp.version,
                &interp.pip_version,
                &interp.paths,
                &interp.platform,
            ))
            .expect("serializable"),
        })
    }

    /// The key of the layer holding `members` (indices into `wheels`).
    fn layer_key(&self, plan: &BuildPlan, wheels: &[PinnedWheel], members: &[usize]) -> Digest {
        let mut text = format!(
            "{LAYER_FORMAT}\n{}\nscheme {}\nmtime {}\ncompile {}\ncompression {}\n",
            layer::FORMAT,
            self.fingerprint,
            plan.source_date_epoch,
            plan.compile_bytecode,
            plan.compression.name()
        );
        for w in members.iter().map(|&i| &wheels[i]) {
            text.push_str(&format!(
                "wheel {} {} {} {} requested={} direct={}\n",
                normalize_name(&w.name),
                w.version,
                w.filename,
                w.sha256,
                w.requested,
                w.direct
            ));
        }
        Digest::of(text.as_bytes())
    }
}

/// The base's python, ready to run pip in the sandbox.
pub(crate) struct PythonEnv {
    pub sandbox: Sandbox,
    pub interp: Interpreter,
    pub runner: PipRunner,
    pub http: crate::LazyHttp,
    /// pip being compiled into the bytecode cache in the background (a first build on a base);
    /// stopped when the environment goes.
    _warming: Option<AbortOnDrop>,
}

/// A background task, aborted (its sandboxed program killed) when this is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl PythonEnv {
    /// Resolve the plan's requirements to exact wheels with the base's pip.
    pub(crate) async fn resolve(
        &self,
        plan: &BuildPlan,
        cache: &Cache,
        reporter: &dyn Reporter,
    ) -> Result<Resolution, BuildError> {
        reporter.info(&format!(
            "Resolving dependencies with Python {} ({})",
            self.interp.version_string(),
            self.interp.executable
        ));
        let r = python::resolve(
            &self.sandbox,
            &self.interp,
            &self.runner,
            &plan.requirements,
            &plan.pip,
            cache,
        )
        .await
        .map_err(BuildError::Python)?;
        reporter.debug(&format!("resolved {} wheel(s)", r.wheels.len()));
        Ok(r)
    }
}

/// Probe the base's python (or take what an earlier probe of the same base said) and pick pip.
pub(crate) async fn python_env(
    plan: &BuildPlan,
    cache: &Cache,
    base: &BaseImage,
    rootfs: &Path,
    reporter: &dyn Reporter,
) -> Result<PythonEnv, BuildError> {
    let py = BuildError::Python;
    let mut sandbox = Sandbox::new(rootfs).map_err(|e| py(e.into()))?;
    let pycache = cache.pycache_dir(&base.manifest_digest);
    let mut warming = None;
    if std::fs::create_dir_all(&pycache).is_ok() {
        let empty = std::fs::read_dir(&pycache).is_ok_and(|mut d| d.next().is_none());
        sandbox = sandbox.with_bytecode_cache(pycache);
        if empty {
            let (sb, path_env) = (sandbox.clone(), base.path_env());
            warming = Some(AbortOnDrop(tokio::spawn(async move {
                python::warm_pip_bytecode(&sb, &path_env).await
            })));
        }
    }
    let interp = probe_cached(&sandbox, cache, base).await?;
    let http = crate::LazyHttp::default();
    let runner = if interp.has_usable_pip() {
        PipRunner::Base
    } else {
        reporter.info(&format!(
            "The base's Python has {}, which cannot write resolution reports; using a pip wheel for Python {}",
            interp.pip_description(),
            interp.version_string()
        ));
        let client = python::wheel_client(&http).map_err(py)?;
        python::bootstrap::bootstrap_pip(&interp, &plan.pip, cache, client)
            .await
            .map_err(|e| py(e.into()))?
    };
    Ok(PythonEnv {
        sandbox,
        interp,
        runner,
        http,
        _warming: warming,
    })
}

fn probe_key(base: &BaseImage) -> Digest {
    Digest::of(
        format!(
            "{PROBE_FORMAT}\n{}\n{}",
            base.manifest_digest,
            base.path_env()
        )
        .as_bytes(),
    )
}

/// What the base's python says about itself is a function of the base: asked once per base.
async fn probe_cached(
    sandbox: &Sandbox,
    cache: &Cache,
    base: &BaseImage,
) -> Result<Interpreter, BuildError> {
    let key = probe_key(base);
    if let Some(i) = cache.get_record::<Interpreter>("probe-v1", &key) {
        return Ok(i);
    }
    let interp = python::probe(sandbox, &base.path_env())
        .await
        .map_err(BuildError::Python)?;
    let _ = cache.put_record("probe-v1", &key, &interp);
    Ok(interp)
}

/// The dependency layers of a resolution (locked, or `None` to resolve now), in image order, and
/// the wheels they hold. `rootfs` gives the base's root filesystem when pip must run.
pub(crate) async fn dependency_layers<F, Fut>(
    plan: &BuildPlan,
    cache: &Cache,
    base: &BaseImage,
    locked: Option<Resolution>,
    rootfs: F,
    reporter: &dyn Reporter,
) -> Result<(Vec<NewLayer>, Vec<PinnedWheel>), BuildError>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<std::path::PathBuf, BuildError>>,
{
    let py = BuildError::Python;
    let mut rootfs = Some(rootfs);
    let mut env: Option<PythonEnv> = None;
    let resolution = match locked {
        Some(r) => r,
        None => {
            let root = (rootfs.take().expect("first use"))().await?;
            let e = python_env(plan, cache, base, &root, reporter).await?;
            let r = e.resolve(plan, cache, reporter).await?;
            env = Some(e);
            r
        }
    };
    if resolution.wheels.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let http = match &env {
        Some(e) => e.http.clone(),
        None => crate::LazyHttp::default(),
    };
    let paths = python::fetch_wheels(&resolution, cache, &http, plan.jobs, reporter)
        .await
        .map_err(py)?;
    reporter.debug("every wheel is in the cache");
    let sizes: Vec<(String, u64)> = resolution
        .wheels
        .iter()
        .zip(&paths)
        .map(|(w, p)| {
            let size = std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
            (normalize_name(&w.name), size)
        })
        .collect();
    let groups = group_layers(&sizes);

    // The interpreter: from an earlier probe of this base when there was one, so a build whose
    // layers are all cached starts no sandbox.
    let cached_interp = match &env {
        Some(e) => Some((e.interp.clone(), e.runner.clone())),
        None => cache
            .get_record::<Interpreter>("probe-v1", &probe_key(base))
            .filter(Interpreter::has_usable_pip)
            .map(|i| (i, PipRunner::Base)),
    };
    let scheme = cached_interp
        .as_ref()
        .and_then(|(i, r)| InstallScheme::of(i, r));
    let mut found: Vec<Option<LayerBlob>> = groups
        .iter()
        .map(|members| {
            let key = scheme
                .as_ref()?
                .layer_key(plan, &resolution.wheels, members);
            layer::cached(cache, &key)
        })
        .collect();

    let missing: Vec<usize> = (0..groups.len()).filter(|&g| found[g].is_none()).collect();
    if missing.is_empty() {
        reporter.info(&format!(
            "Using {} cached dependency layer(s) for {} wheel(s)",
            groups.len(),
            resolution.wheels.len()
        ));
    } else {
        let env = match env {
            Some(e) => e,
            None => {
                let root = (rootfs.take().expect("first use"))().await?;
                python_env(plan, cache, base, &root, reporter).await?
            }
        };
        // Keys need the scheme, which a first build learns only now.
        let scheme = InstallScheme::of(&env.interp, &env.runner);
        let built = install_and_split(
            plan,
            cache,
            &env,
            &resolution,
            &paths,
            &sizes,
            &groups,
            &missing,
            reporter,
        )
        .await?;
        for (&g, blob) in missing.iter().zip(built) {
            if let Some(scheme) = &scheme {
                let key = scheme.layer_key(plan, &resolution.wheels, &groups[g]);
                layer::remember(cache, &key, &blob, reporter);
            }
            found[g] = Some(blob);
        }
    }

    let layers = groups
        .iter()
        .zip(found)
        .map(|(members, blob)| {
            let blob = blob.expect("every layer found or built");
            let names: Vec<String> = members
                .iter()
                .map(|&i| {
                    let w = &resolution.wheels[i];
                    format!("{}=={}", w.name, w.version)
                })
                .collect();
            NewLayer {
                descriptor: Descriptor::new(blob.media_type, blob.digest.clone(), blob.size),
                diff_id: blob.diff_id,
                created_by: format!("vxbuild: pip install {}", names.join(" ")),
            }
        })
        .collect();
    Ok((layers, resolution.wheels))
}

/// Split the `missing` groups into at most `n` buckets of about equal wheel bytes (largest
/// first, to the lightest bucket): one pip run each, in parallel. Which bucket a group lands in
/// changes no byte of its layer.
pub fn buckets(missing: &[usize], weight: impl Fn(usize) -> u64, n: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = missing.to_vec();
    order.sort_by_key(|&g| (std::cmp::Reverse(weight(g)), g));
    let mut out: Vec<(u64, Vec<usize>)> = vec![(0, Vec::new()); n.clamp(1, missing.len().max(1))];
    for g in order {
        let lightest = (0..out.len())
            .min_by_key(|&b| (out[b].0, b))
            .expect("at least one bucket");
        out[lightest].0 += weight(g);
        out[lightest].1.push(g);
    }
    out.into_iter()
        .map(|(_, mut gs)| {
            gs.sort_unstable();
            gs
        })
        .filter(|gs| !gs.is_empty())
        .collect()
}

/// Install the wheels of the `missing` groups and write their layers. pip runs once per bucket
/// ([`buckets`], one per core), each into its own staging root, and each bucket's layers are
/// compressed as soon as its pip is done, while the other pips still run. Returns the blobs in
/// `missing`'s order.
#[allow(clippy::too_many_arguments)]
async fn install_and_split(
    plan: &BuildPlan,
    cache: &Cache,
    env: &PythonEnv,
    resolution: &Resolution,
    paths: &[std::path::PathBuf],
    sizes: &[(String, u64)],
    groups: &[Vec<usize>],
    missing: &[usize],
    reporter: &dyn Reporter,
) -> Result<Vec<LayerBlob>, BuildError> {
    let py = BuildError::Python;
    let wanted: Vec<usize> = missing
        .iter()
        .flat_map(|&g| groups[g].iter().copied())
        .collect();
    let wanted_paths: Vec<std::path::PathBuf> = wanted.iter().map(|&i| paths[i].clone()).collect();
    let installed_sizes = python::check_wheels(&wanted_paths).await.map_err(py)?;
    let mut installed = vec![0u64; paths.len()];
    for (&i, n) in wanted.iter().zip(installed_sizes) {
        installed[i] = n;
    }
    reporter.info(&format!("Installing {} wheel(s)", wanted.len()));
    if plan.compile_bytecode {
        reporter.info("Compiling the dependencies to bytecode");
    }
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let buckets = buckets(
        missing,
        |g| groups[g].iter().map(|&i| sizes[i].1).sum(),
        cores.min(plan.jobs.max(1)),
    );
    // One bound for all layer writes, whichever bucket they come from.
    let limit = Arc::new(tokio::sync::Semaphore::new(plan.jobs.max(1)));
    let runs = buckets.iter().map(|bucket| {
        install_bucket(
            plan,
            cache,
            env,
            resolution,
            paths,
            groups,
            bucket,
            &installed,
            limit.clone(),
            reporter,
        )
    });
    let done: Vec<Vec<(usize, LayerBlob)>> = futures_util::future::try_join_all(runs).await?;
    let mut by_group: std::collections::HashMap<usize, LayerBlob> =
        done.into_iter().flatten().collect();
    Ok(missing
        .iter()
        .map(|g| by_group.remove(g).expect("every missing group built"))
        .collect())
}

/// One pip run for the wheels of `bucket`'s groups, then their layers.
#[allow(clippy::too_many_arguments)]
async fn install_bucket(
    plan: &BuildPlan,
    cache: &Cache,
    env: &PythonEnv,
    resolution: &Resolution,
    paths: &[std::path::PathBuf],
    groups: &[Vec<usize>],
    bucket: &[usize],
    installed: &[u64],
    limit: Arc<tokio::sync::Semaphore>,
    reporter: &dyn Reporter,
) -> Result<Vec<(usize, LayerBlob)>, BuildError> {
    let py = BuildError::Python;
    let mut wanted: Vec<usize> = bucket.iter().flat_map(|&g| groups[g].clone()).collect();
    wanted.sort_unstable();
    let subset = Resolution {
        wheels: wanted
            .iter()
            .map(|&i| resolution.wheels[i].clone())
            .collect(),
    };
    let subset_paths: Vec<std::path::PathBuf> = wanted.iter().map(|&i| paths[i].clone()).collect();
    // pip's writes go to memory when they fit: thousands of small files (crate::scratch).
    let need: u64 = wanted.iter().map(|&i| installed[i]).sum();
    let scratch = crate::scratch::create(cache, "install-", need, false, plan.scratch)
        .map_err(BuildError::Scratch)?;
    reporter.debug(&format!(
        "installing {} wheel(s) ({} MB) into {}",
        wanted.len(),
        need / 1_000_000,
        scratch.path().display()
    ));
    let staging = scratch.path().join("staging");
    std::fs::create_dir(&staging).map_err(BuildError::Scratch)?;
    python::install(
        &env.sandbox,
        &env.interp,
        &env.runner,
        &subset,
        &subset_paths,
        &staging,
        scratch.path(),
    )
    .await
    .map_err(py)?;
    if plan.compile_bytecode {
        python::compile_bytecode(&env.sandbox, &env.interp, &staging)
            .await
            .map_err(py)?;
    }
    let split_root = staging.clone();
    let mut by_dist =
        tokio::task::spawn_blocking(move || python::split::split_by_distribution(&split_root))
            .await
            .expect("split task")
            .map_err(|e| py(python::PythonError::Split(e)))?;

    let opts = LayerOptions {
        mtime: plan.source_date_epoch,
        compression: plan.compression,
    };
    let mut tasks = Vec::new();
    for &g in bucket {
        let mut entries: Vec<LayerEntry> = Vec::new();
        for &i in &groups[g] {
            let name = normalize_name(&resolution.wheels[i].name);
            entries.extend(by_dist.remove(&name).unwrap_or_default());
        }
        let (c, o, limit) = (cache.clone(), opts.clone(), limit.clone());
        tasks.push((
            g,
            tokio::spawn(async move {
                let _permit = limit.acquire_owned().await.expect("semaphore open");
                tokio::task::spawn_blocking(move || layer::write_layer(entries, &o, &c))
                    .await
                    .expect("layer task")
            }),
        ));
    }
    if let Some(name) = by_dist.keys().next() {
        // Installed, yet not in the resolution (a wheel named differently inside): still no file
        // may be dropped silently.
        return Err(py(python::PythonError::Split(
            python::split::SplitError::Unowned {
                path: format!("(files of {name}, which is not in the resolution)"),
            },
        )));
    }
    let mut blobs = Vec::new();
    for (g, t) in tasks {
        let blob = t
            .await
            .expect("layer task")
            .map_err(|source| BuildError::Layer {
                what: "dependencies",
                source,
            })?;
        blobs.push((g, blob));
    }
    drop(scratch);
    Ok(blobs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sizes(v: &[(&str, u64)]) -> Vec<(String, u64)> {
        v.iter().map(|(n, s)| (n.to_string(), *s)).collect()
    }

    fn names(w: &[(String, u64)], groups: &[Vec<usize>]) -> Vec<Vec<String>> {
        groups
            .iter()
            .map(|g| g.iter().map(|&i| w[i].0.clone()).collect())
            .collect()
    }

    #[test]
    fn big_wheels_alone_small_ones_shared_in_name_order() {
        let w = sizes(&[
            ("scikit-learn", 9 << 20),
            ("numpy", 18 << 20),
            ("six", 11_000),
            ("joblib", 300_000),
            ("threadpoolctl", 18_000),
            ("scipy", 30 << 20),
        ]);
        let g = group_layers(&w);
        let n = names(&w, &g);
        for big in ["numpy", "scikit-learn", "scipy"] {
            assert!(n.contains(&vec![big.to_string()]), "{n:?}");
        }
        let all: Vec<String> = n.concat();
        assert_eq!(all.len(), 6);
        // Groups come in the order of their first name.
        let firsts: Vec<&String> = n.iter().map(|g| &g[0]).collect();
        let mut sorted = firsts.clone();
        sorted.sort();
        assert_eq!(firsts, sorted);
        // The input order does not matter.
        let mut rev = w.clone();
        rev.reverse();
        assert_eq!(names(&rev, &group_layers(&rev)), n);
    }

    #[test]
    fn bumping_or_adding_a_small_package_changes_one_shared_layer() {
        let base: Vec<(String, u64)> = (0..40).map(|i| (format!("pkg{i:02}"), 10_000)).collect();
        let before = names(&base, &group_layers(&base));
        let mut more = base.clone();
        more.push(("pkg20a".into(), 10_000));
        let after = names(&more, &group_layers(&more));
        let changed: Vec<&Vec<String>> = after.iter().filter(|g| !before.contains(g)).collect();
        assert_eq!(changed.len(), 1, "{before:?}\n{after:?}");
        assert!(
            after.len() > 3,
            "small packages are spread over several layers: {after:?}"
        );
    }

    #[test]
    fn buckets_balance_bytes_and_keep_every_group_once() {
        let w = [30u64, 1, 19, 13, 2];
        let b = buckets(&[0, 1, 2, 3, 4], |g| w[g], 2);
        // 30 → A, 19 → B, 13 → B (32), 2 → A (32), 1 → A: 33 against 32.
        assert_eq!(b, vec![vec![0, 1, 4], vec![2, 3]]);
        assert_eq!(buckets(&[3], |g| w[g], 4), vec![vec![3]]);
        assert_eq!(buckets(&[0, 2], |g| w[g], 1), vec![vec![0, 2]]);
    }

    #[test]
    fn never_more_than_the_limit() {
        let w: Vec<(String, u64)> = (0..400)
            .map(|i| (format!("p{i:03}"), if i % 2 == 0 { 2 << 20 } else { 1000 }))
            .collect();
        let g = group_layers(&w);
        assert!(g.len() <= MAX_DEP_LAYERS, "{}", g.len());
        let mut all: Vec<usize> = g.concat();
        all.sort_unstable();
        assert_eq!(all, (0..400).collect::<Vec<_>>());
    }
}
