//! Flags + vxbuild.toml → a validated [`BuildPlan`]. All checking of user input happens here, before
//! any work, and every error names the flag, file or reference at fault.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::cli::BuildArgs;
use crate::oci::Platform;
use crate::python::{FindLinks, PipOptions, Requirements};
use crate::reference::Reference;

pub const DEFAULT_BASE: &str = "python:3.9-slim";
pub const DEFAULT_MAX_FILE_SIZE: u64 = 10_000_000;
pub const CONFIG_FILE: &str = "vxbuild.toml";

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("project folder {}: {why}", path.display())]
    ProjectDir { path: PathBuf, why: String },
    #[error("{file}: {why}")]
    ConfigFile { file: String, why: String },
    #[error("{flag}: {why}")]
    Flag { flag: &'static str, why: String },
}

fn flag(flag: &'static str, why: impl Into<String>) -> PlanError {
    PlanError::Flag {
        flag,
        why: why.into(),
    }
}

/// vxbuild.toml: the same settings as the flags, in kebab-case. Flags win.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ConfigFile {
    pub script: Option<String>,
    pub python_module: Option<String>,
    #[serde(default)]
    pub requirements: Vec<String>,
    #[serde(default)]
    pub extra_packages: Vec<PathBuf>,
    #[serde(default)]
    pub extra_dirs: Vec<PathBuf>,
    pub base_image: Option<String>,
    pub image: Option<String>,
    #[serde(default)]
    pub push: bool,
    #[serde(default)]
    pub output: Vec<String>,
    pub index_url: Option<String>,
    #[serde(default)]
    pub extra_index_url: Vec<String>,
    #[serde(default)]
    pub find_links: Vec<String>,
    #[serde(default)]
    pub no_index: bool,
    pub max_file_size: Option<String>,
    #[serde(default)]
    pub insecure_registry: Vec<String>,
    pub compression: Option<String>,
}

/// A local destination for the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalOutput {
    /// An OCI image layout folder.
    Layout { dir: PathBuf, tag: String },
    /// An OCI archive (a tar of a layout).
    Archive { file: PathBuf, tag: String },
}

impl LocalOutput {
    /// How the output is named in the printed reference: `oci:DIR:TAG`.
    pub fn display_ref(&self) -> String {
        match self {
            LocalOutput::Layout { dir, tag } => format!("oci:{}:{tag}", dir.display()),
            LocalOutput::Archive { file, tag } => format!("oci-archive:{}:{tag}", file.display()),
        }
    }
    fn path(&self) -> &Path {
        match self {
            LocalOutput::Layout { dir, .. } => dir,
            LocalOutput::Archive { file, .. } => file,
        }
    }
}

/// How a build treats vxbuild.lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// Use the lock when it matches its inputs; otherwise resolve and (re)write it.
    Auto,
    /// Use the lock; fail when it is missing or stale (`--locked`).
    Locked,
    /// Neither read nor write a lock (`--no-lock`).
    Off,
}

/// Everything one build needs, checked.
#[derive(Debug, Clone)]
pub struct BuildPlan {
    /// Canonical path of the project folder.
    pub project_dir: PathBuf,
    /// The script (relative to the project) or module the image runs.
    pub script: Option<String>,
    pub python_module: Option<String>,
    pub entrypoint: Vec<String>,
    pub requirements: Requirements,
    /// Extra folders: (canonical host path, path relative to the project).
    pub extra_dirs: Vec<(PathBuf, String)>,
    pub base: Reference,
    /// The target, with a tag (latest when none was given).
    pub target: Option<Reference>,
    pub push: bool,
    pub outputs: Vec<LocalOutput>,
    pub pip: PipOptions,
    pub cache_dir: PathBuf,
    pub max_file_size: u64,
    pub insecure_registries: Vec<String>,
    pub source_date_epoch: u64,
    pub platform: Platform,
    pub jobs: usize,
    pub compile_bytecode: bool,
    /// How new layers are compressed.
    pub compression: crate::compress::Codec,
    /// Where scratch trees go (`--scratch`).
    pub scratch: crate::scratch::ScratchPolicy,
    /// How vxbuild.lock is used.
    pub lock_mode: LockMode,
    /// Absolute paths inside the project that are the build's own (outputs, cache): never copied.
    pub source_excludes: Vec<PathBuf>,
}

/// Read the environment variables a plan depends on (kept separate so tests can pass their own).
pub struct Environment {
    pub cwd: PathBuf,
    pub vars: Vec<(String, String)>,
}

impl Environment {
    pub fn from_process() -> std::io::Result<Self> {
        Ok(Environment {
            cwd: std::env::current_dir()?,
            vars: std::env::vars().collect(),
        })
    }
    fn get(&self, k: &str) -> Option<&str> {
        self.vars
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }
}

/// The plan for `vxbuild build`: it must have somewhere to put the image.
pub fn plan(args: BuildArgs, env: &Environment) -> Result<BuildPlan, PlanError> {
    plan_for(args, env, true)
}

/// The plan for `vxbuild lock`: the same inputs, no destination needed.
pub fn plan_lock(args: BuildArgs, env: &Environment) -> Result<BuildPlan, PlanError> {
    plan_for(args, env, false)
}

fn plan_for(
    args: BuildArgs,
    env: &Environment,
    needs_destination: bool,
) -> Result<BuildPlan, PlanError> {
    let dir_arg = args.dir.clone().unwrap_or_else(|| PathBuf::from("."));
    let dir_abs = env.cwd.join(&dir_arg);
    let project_dir = dir_abs.canonicalize().map_err(|e| PlanError::ProjectDir {
        path: dir_arg.clone(),
        why: format!("cannot be opened ({e})"),
    })?;
    if !project_dir.is_dir() {
        return Err(PlanError::ProjectDir {
            path: dir_arg,
            why: "is not a folder".into(),
        });
    }
    let config_path = project_dir.join(CONFIG_FILE);
    let cfg: ConfigFile = match std::fs::read_to_string(&config_path) {
        Ok(text) => toml::from_str(&text).map_err(|e| PlanError::ConfigFile {
            file: config_path.display().to_string(),
            why: e.to_string().trim().replace('\n', " "),
        })?,
        Err(_) => ConfigFile::default(),
    };

    // Entrypoint: exactly one of --script / --python-module; train.py by default.
    let script_flag = args.script.clone();
    let module_flag = args.python_module.clone();
    let (script, module) = match (script_flag, module_flag) {
        (Some(_), Some(_)) => {
            return Err(flag(
                "--script",
                "cannot be combined with --python-module; give exactly one",
            ));
        }
        (Some(s), None) => (Some(s), None),
        (None, Some(m)) => (None, Some(m)),
        (None, None) => match (cfg.script.clone(), cfg.python_module.clone()) {
            (Some(_), Some(_)) => {
                return Err(PlanError::ConfigFile {
                    file: config_path.display().to_string(),
                    why: "sets both script and python-module; give exactly one".into(),
                });
            }
            (s, m) if s.is_some() || m.is_some() => (s, m),
            _ if project_dir.join("train.py").is_file() => (Some("train.py".into()), None),
            _ => {
                return Err(flag(
                    "--script",
                    format!(
                        "no training script given and {} has no train.py; pass --script FILE or --python-module MODULE",
                        project_dir.display()
                    ),
                ));
            }
        },
    };
    if let Some(s) = &script {
        check_relative("--script", s)?;
        let p = project_dir.join(s);
        if !p.is_file() {
            return Err(flag(
                "--script",
                format!("{s} does not exist in {}", project_dir.display()),
            ));
        }
    }
    if let Some(m) = &module {
        let valid = !m.is_empty()
            && m.split('.').all(|part| {
                let mut c = part.chars();
                c.next().is_some_and(|f| f.is_alphabetic() || f == '_')
                    && c.all(|ch| ch.is_alphanumeric() || ch == '_')
            });
        if !valid {
            return Err(flag(
                "--python-module",
                format!("{m:?} is not a dotted Python module name (e.g. trainer.task)"),
            ));
        }
    }
    let entrypoint = crate::image::entrypoint_for(script.as_deref(), module.as_deref());

    // Requirements.
    let req_file = project_dir.join("requirements.txt");
    let specs = if args.requirements.is_empty() {
        cfg.requirements.clone()
    } else {
        args.requirements.clone()
    };
    let specs: Vec<String> = specs
        .into_iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    for s in &specs {
        crate::python::requirements::check_cli_spec(s)
            .map_err(|e| flag("--requirements", format!("`{}` {}", e.line, e.why)))?;
    }
    let extra = if args.extra_packages.is_empty() {
        cfg.extra_packages.clone()
    } else {
        args.extra_packages.clone()
    };
    let mut extra_packages = Vec::new();
    for p in extra {
        let abs = project_dir.join(&p);
        let name = p.display().to_string();
        if !abs.is_file() {
            return Err(flag(
                "--extra-packages",
                format!("{name} does not exist in {}", project_dir.display()),
            ));
        }
        if !name.ends_with(".whl") {
            return Err(flag(
                "--extra-packages",
                format!(
                    "{name} is not a wheel (.whl); vxbuild installs wheels only, so no package code runs at build time"
                ),
            ));
        }
        extra_packages.push(abs);
    }
    let requirements = Requirements {
        requirements_file: req_file.is_file().then_some(req_file),
        specs,
        extra_packages,
    };

    let extra_dirs_in = if args.extra_dirs.is_empty() {
        cfg.extra_dirs.clone()
    } else {
        args.extra_dirs.clone()
    };
    let mut extra_dirs = Vec::new();
    for d in extra_dirs_in {
        let shown = d.display().to_string();
        check_relative("--extra-dirs", &shown)?;
        let abs = project_dir.join(&d).canonicalize().map_err(|_| {
            flag(
                "--extra-dirs",
                format!("{shown} does not exist in {}", project_dir.display()),
            )
        })?;
        if !abs.is_dir() {
            return Err(flag("--extra-dirs", format!("{shown} is not a folder")));
        }
        let rel = abs
            .strip_prefix(&project_dir)
            .map_err(|_| {
                flag(
                    "--extra-dirs",
                    format!("{shown} leads outside the project folder"),
                )
            })?
            .to_string_lossy()
            .into_owned();
        extra_dirs.push((abs, rel));
    }

    // Images.
    let base_str = args
        .base_image
        .clone()
        .or(cfg.base_image.clone())
        .unwrap_or_else(|| DEFAULT_BASE.into());
    let base = Reference::parse(&base_str).map_err(|e| flag("--base-image", e.to_string()))?;
    let target = match args.image.clone().or(cfg.image.clone()) {
        Some(s) => {
            let r = Reference::parse(&s).map_err(|e| flag("--image", e.to_string()))?;
            if r.digest.is_some() {
                return Err(flag(
                    "--image",
                    format!(
                        "{s} names a digest; the target must be a tag (the digest is what the build produces)"
                    ),
                ));
            }
            Some(Reference {
                tag: Some(r.tag_or_latest().to_string()),
                ..r
            })
        }
        None => None,
    };
    let push = args.push || cfg.push;
    if push && target.is_none() {
        return Err(flag(
            "--push",
            "needs --image REF (the repository to push to)",
        ));
    }
    let default_tag = target
        .as_ref()
        .map(|t| t.tag_or_latest().to_string())
        .unwrap_or_else(|| "latest".into());
    let outputs_in = if args.output.is_empty() {
        cfg.output.clone()
    } else {
        args.output.clone()
    };
    let mut outputs = Vec::new();
    for o in &outputs_in {
        outputs.push(parse_output(o, &default_tag, &env.cwd)?);
    }
    if needs_destination && !push && outputs.is_empty() {
        return Err(flag(
            "--push",
            "nothing to do: pass --push (with --image) and/or --output oci:DIR[:TAG]",
        ));
    }

    // pip.
    let index_url = args.index_url.clone().or(cfg.index_url.clone());
    if let Some(u) = &index_url {
        check_url("--index-url", u)?;
    }
    let extra_index_urls: Vec<String> = if args.extra_index_url.is_empty() {
        cfg.extra_index_url.clone()
    } else {
        args.extra_index_url.clone()
    }
    .into_iter()
    .filter(|s| !s.is_empty())
    .collect();
    for u in &extra_index_urls {
        check_url("--extra-index-url", u)?;
    }
    let (links_in, links_base) = if args.find_links.is_empty() {
        (cfg.find_links.clone(), project_dir.clone())
    } else {
        (args.find_links.clone(), env.cwd.clone())
    };
    let mut find_links = Vec::new();
    for l in links_in.into_iter().filter(|s| !s.is_empty()) {
        if l.contains("://") {
            check_url("--find-links", &l)?;
            find_links.push(FindLinks::Url(l));
        } else {
            let p = links_base.join(&l);
            if !p.is_dir() {
                return Err(flag(
                    "--find-links",
                    format!("{l} is not a folder (nor a URL)"),
                ));
            }
            find_links.push(FindLinks::Dir(p.canonicalize().unwrap_or(p)));
        }
    }
    let no_index = args.no_index || cfg.no_index;
    let ca_bundle = ["PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"]
        .iter()
        .find_map(|k| env.get(k))
        .map(PathBuf::from)
        .or_else(|| Some(PathBuf::from("/etc/ssl/certs/ca-certificates.crt")))
        .filter(|p| p.is_file());
    let proxy_env = env
        .vars
        .iter()
        .filter(|(k, _)| {
            ["http_proxy", "https_proxy", "no_proxy", "all_proxy"]
                .contains(&k.to_ascii_lowercase().as_str())
        })
        .cloned()
        .collect();
    let pip = PipOptions {
        index_url,
        extra_index_urls,
        find_links,
        no_index,
        ca_bundle,
        proxy_env,
    };

    let cache_dir = match args.cache_dir.clone() {
        Some(p) => env.cwd.join(p),
        None => crate::cache::default_cache_dir()
            .ok_or_else(|| flag("--cache-dir", "HOME is not set; pass --cache-dir DIR"))?,
    };
    let size_str = args.max_file_size.clone().or(cfg.max_file_size.clone());
    let max_file_size = match size_str {
        Some(s) => crate::source::parse_size(&s).map_err(|e| flag("--max-file-size", e))?,
        None => DEFAULT_MAX_FILE_SIZE,
    };
    let source_date_epoch = match env.get("SOURCE_DATE_EPOCH") {
        Some(v) => v.parse().map_err(|_| {
            flag(
                "SOURCE_DATE_EPOCH",
                format!("{v:?} is not a whole number of seconds since 1970"),
            )
        })?,
        None => 0,
    };
    if args.jobs == 0 {
        return Err(flag("--jobs", "must be at least 1"));
    }
    let compression = match args
        .compression
        .clone()
        .or(cfg.compression.clone())
        .as_deref()
    {
        None | Some("gzip") => crate::compress::Codec::Gzip,
        Some("zstd") => crate::compress::Codec::Zstd,
        Some(other) => {
            return Err(flag(
                "compression",
                format!("{other:?} is not gzip or zstd (vxbuild.toml)"),
            ));
        }
    };
    let mut insecure_registries = args.insecure_registry.clone();
    insecure_registries.extend(cfg.insecure_registry.clone());

    let mut source_excludes: Vec<PathBuf> =
        outputs.iter().map(|o| o.path().to_path_buf()).collect();
    source_excludes.push(cache_dir.clone());
    // Build metadata, not application code; and the first build writes it, so copying it would
    // make the second build's digest differ from the first.
    source_excludes.push(project_dir.join(crate::lock::LOCK_FILE));
    let source_excludes = source_excludes
        .into_iter()
        .map(|p| {
            let parent = p.parent().and_then(|d| d.canonicalize().ok());
            match (parent, p.file_name()) {
                (Some(d), Some(n)) => d.join(n),
                _ => p,
            }
        })
        .filter(|p| p.starts_with(&project_dir))
        .collect();

    Ok(BuildPlan {
        project_dir,
        script,
        python_module: module,
        entrypoint,
        requirements,
        extra_dirs,
        base,
        target,
        push,
        outputs,
        pip,
        cache_dir,
        max_file_size,
        insecure_registries,
        source_date_epoch,
        platform: Platform::host(),
        jobs: args.jobs,
        compile_bytecode: args.compile_bytecode,
        compression,
        scratch: match args.scratch.as_deref() {
            Some("disk") => crate::scratch::ScratchPolicy::Disk,
            _ => crate::scratch::ScratchPolicy::Auto,
        },
        lock_mode: if args.no_lock {
            LockMode::Off
        } else if args.locked {
            LockMode::Locked
        } else {
            LockMode::Auto
        },
        source_excludes,
    })
}

fn check_relative(flag_name: &'static str, p: &str) -> Result<(), PlanError> {
    let path = Path::new(p);
    if path.is_absolute()
        || path
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(flag(
            flag_name,
            format!("{p} must be a path inside the project folder, relative to it"),
        ));
    }
    Ok(())
}

fn check_url(flag_name: &'static str, u: &str) -> Result<(), PlanError> {
    match url::Url::parse(u) {
        Ok(parsed) if ["http", "https", "file"].contains(&parsed.scheme()) => Ok(()),
        _ => Err(flag(
            flag_name,
            format!("{} is not an http(s) URL", crate::python::redact_url(u)),
        )),
    }
}

/// `oci:DIR[:TAG]` or `oci-archive:FILE[:TAG]`.
pub fn parse_output(s: &str, default_tag: &str, cwd: &Path) -> Result<LocalOutput, PlanError> {
    let (kind, rest) = if let Some(r) = s.strip_prefix("oci:") {
        ("oci", r)
    } else if let Some(r) = s.strip_prefix("oci-archive:") {
        ("oci-archive", r)
    } else {
        return Err(flag(
            "--output",
            format!("{s:?} is not oci:DIR[:TAG] or oci-archive:FILE[:TAG]"),
        ));
    };
    let (path, tag) = match rest.rsplit_once(':') {
        Some((p, t)) if !t.contains('/') && !p.is_empty() => {
            if !is_valid_tag(t) {
                return Err(flag(
                    "--output",
                    format!(
                        "{t:?} in {s:?} is not a valid tag ([A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})"
                    ),
                ));
            }
            (p, t.to_string())
        }
        _ => (rest, default_tag.to_string()),
    };
    if path.is_empty() {
        return Err(flag("--output", format!("{s:?} names no path")));
    }
    let abs = cwd.join(path);
    if kind == "oci" && abs.exists() && !abs.is_dir() {
        return Err(flag(
            "--output",
            format!("{path} exists and is not a folder"),
        ));
    }
    if kind == "oci-archive" && abs.is_dir() {
        return Err(flag(
            "--output",
            format!("{path} is a folder; oci-archive needs a file name"),
        ));
    }
    Ok(if kind == "oci" {
        LocalOutput::Layout { dir: abs, tag }
    } else {
        LocalOutput::Archive { file: abs, tag }
    })
}

fn is_valid_tag(t: &str) -> bool {
    let mut c = t.chars();
    !t.is_empty()
        && t.len() <= 128
        && c.next()
            .is_some_and(|f| f.is_ascii_alphanumeric() || f == '_')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '.' || ch == '-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn project() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("train.py"), "print('Training complete')\n").unwrap();
        std::fs::write(d.path().join("requirements.txt"), "numpy\n").unwrap();
        d
    }

    fn run(dir: &Path, args: &[&str]) -> Result<BuildPlan, PlanError> {
        let mut argv = vec!["vxbuild"];
        argv.extend_from_slice(args);
        let cli = crate::cli::Cli::try_parse_from(argv).expect("clap accepts");
        let env = Environment {
            cwd: dir.to_path_buf(),
            vars: vec![("HOME".into(), "/nonexistent-home".into())],
        };
        plan(cli.into_build_args(), &env)
    }

    fn err(dir: &Path, args: &[&str]) -> String {
        run(dir, args).expect_err("should be refused").to_string()
    }

    #[test]
    fn defaults() {
        let d = project();
        let p = run(d.path(), &["--output", "oci:out"]).unwrap();
        assert_eq!(p.entrypoint, ["python", "train.py"]);
        assert_eq!(p.base.to_string(), "docker.io/library/python:3.9-slim");
        assert_eq!(
            p.outputs,
            [LocalOutput::Layout {
                dir: d.path().join("out"),
                tag: "latest".into()
            }]
        );
        assert_eq!(p.max_file_size, 10_000_000);
        assert_eq!(p.source_date_epoch, 0);
        assert!(p.requirements.requirements_file.is_some());
        let root = d.path().canonicalize().unwrap();
        assert_eq!(
            p.source_excludes,
            [root.join("out"), root.join("vxbuild.lock")]
        );
    }

    #[test]
    fn build_subcommand_and_push() {
        let d = project();
        let p = run(
            d.path(),
            &[
                "build",
                ".",
                "--push",
                "--image",
                "localhost:5000/team/trainer",
            ],
        )
        .unwrap();
        assert!(p.push);
        assert_eq!(
            p.target.unwrap().to_string(),
            "localhost:5000/team/trainer:latest"
        );
        let p = run(
            d.path(),
            &[
                "--push",
                "--output-image-uri",
                "localhost:5000/t:v1",
                "--executor-image-uri",
                "localhost:5000/py:3.9",
            ],
        )
        .unwrap();
        assert_eq!(p.target.unwrap().tag.as_deref(), Some("v1"));
        assert_eq!(p.base.to_string(), "localhost:5000/py:3.9");
    }

    #[test]
    fn bad_flags_name_the_flag() {
        let d = project();
        std::fs::write(d.path().join("data.tar.gz"), "x").unwrap();
        let cases: &[(&[&str], &str)] = &[
            (&["--push"], "--push: needs --image"),
            (&[], "--push: nothing to do"),
            (
                &["--output", "oci:o", "--script", "missing.py"],
                "--script: missing.py does not exist",
            ),
            (
                &["--output", "oci:o", "--script", "../train.py"],
                "--script: ../train.py must be a path inside",
            ),
            (
                &["--output", "oci:o", "--python-module", "1bad"],
                "--python-module:",
            ),
            (
                &["--output", "oci:o", "--extra-packages", "nope.whl"],
                "--extra-packages: nope.whl does not exist",
            ),
            (
                &["--output", "oci:o", "--extra-packages", "data.tar.gz"],
                "--extra-packages: data.tar.gz is not a wheel",
            ),
            (
                &["--output", "oci:o", "--extra-dirs", "nodir"],
                "--extra-dirs: nodir does not exist",
            ),
            (
                &["--output", "oci:o", "--base-image", "Not/Valid:ref"],
                "--base-image:",
            ),
            (
                &[
                    "--push",
                    "--image",
                    "localhost:5000/x@sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                ],
                "--image:",
            ),
            (&["--output", "tar:x"], "--output:"),
            (&["--output", "oci:o:bad tag"], "--output:"),
            (
                &["--output", "oci:o", "--max-file-size", "lots"],
                "--max-file-size:",
            ),
            (
                &["--output", "oci:o", "--index-url", "not a url"],
                "--index-url:",
            ),
            (
                &["--output", "oci:o", "--find-links", "no-such-dir"],
                "--find-links:",
            ),
            (
                &["--output", "oci:o", "--requirements=-e ."],
                "--requirements:",
            ),
            (&["--output", "oci:o", "--jobs", "0"], "--jobs:"),
        ];
        for (args, want) in cases {
            let e = err(d.path(), args);
            assert!(e.contains(want), "{args:?}: got {e:?}, want {want:?}");
        }
    }

    #[test]
    fn script_and_module_are_exclusive() {
        let d = project();
        let cli = crate::cli::Cli::try_parse_from([
            "vxbuild",
            "--script",
            "train.py",
            "--python-module",
            "m",
        ]);
        let e = cli.unwrap_err().to_string();
        assert!(
            e.contains("--script") && e.contains("--python-module"),
            "{e}"
        );
        std::fs::remove_file(d.path().join("train.py")).unwrap();
        assert!(
            err(d.path(), &["--output", "oci:o"]).contains("--script: no training script given")
        );
    }

    #[test]
    fn config_file_settings_and_flags_win() {
        let d = project();
        std::fs::write(d.path().join("run.sh"), "echo hi\n").unwrap();
        std::fs::write(
            d.path().join("vxbuild.toml"),
            "script = \"run.sh\"\nimage = \"localhost:5000/a/b:c\"\npush = true\nrequirements = [\"pandas\"]\n",
        )
        .unwrap();
        let p = run(d.path(), &[]).unwrap();
        assert_eq!(p.entrypoint, ["/bin/bash", "run.sh"]);
        assert_eq!(p.requirements.specs, ["pandas"]);
        assert!(p.push);
        let p = run(
            d.path(),
            &[
                "--python-module",
                "trainer.task",
                "--image",
                "localhost:5000/x",
            ],
        )
        .unwrap();
        assert_eq!(p.entrypoint, ["python", "-m", "trainer.task"]);
        assert_eq!(p.target.unwrap().to_string(), "localhost:5000/x:latest");
        std::fs::write(d.path().join("vxbuild.toml"), "scrpit = \"x\"\n").unwrap();
        let e = err(d.path(), &["--output", "oci:o"]);
        assert!(e.contains("vxbuild.toml") && e.contains("scrpit"), "{e}");
    }

    #[test]
    fn outputs_parse() {
        let cwd = Path::new("/work");
        assert_eq!(
            parse_output("oci:out:v1", "latest", cwd).unwrap(),
            LocalOutput::Layout {
                dir: "/work/out".into(),
                tag: "v1".into()
            }
        );
        assert_eq!(
            parse_output("oci-archive:/tmp/img.tar", "t", cwd).unwrap(),
            LocalOutput::Archive {
                file: "/tmp/img.tar".into(),
                tag: "t".into()
            }
        );
        assert_eq!(
            parse_output("oci:./a/b", "t", cwd).unwrap(),
            LocalOutput::Layout {
                dir: "/work/./a/b".into(),
                tag: "t".into()
            }
        );
    }
}
