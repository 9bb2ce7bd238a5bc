//! Stage 2: resolve and install the project's dependencies with the base image's own Python, inside
//! the sandbox.
//!
//! 1. [`probe`]: find the base's interpreter, its version, install scheme and pip.
//! 2. [`resolve`]: `pip install --dry-run --report` (network on) → exact wheels with their sha256.
//! 3. [`fetch_wheels`]: download each wheel into the content-addressed cache, verified.
//! 4. [`install`]: `pip install --no-deps --no-index --require-hashes --root STAGING` (network off).

pub mod bootstrap;
pub mod requirements;
pub mod split;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::cache::Cache;
use crate::digest::{ChunkHasher, Digest};
use crate::report::Reporter;
use crate::sandbox::{Sandbox, SandboxCommand, SandboxError, SandboxOutput};

/// pip's `--report` arrived in 22.2.
pub const MIN_PIP: (u32, u32) = (22, 2);

#[derive(Debug, thiserror::Error)]
pub enum PythonError {
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error("no python3 or python found on the base image's PATH ({path})")]
    NoInterpreter { path: String },
    #[error("failed to probe the base image's Python ({program}), exit status {status}:\n{stderr}")]
    Probe {
        program: String,
        status: String,
        stderr: String,
    },
    #[error("pip could not resolve the requirements (exit status {status}):\n{stderr}{hint}")]
    Resolve {
        status: String,
        stderr: String,
        hint: String,
    },
    #[error("failed to read pip's resolution report")]
    Report(#[source] serde_json::Error),
    #[error(
        "{name} {version} would be installed from a source distribution ({file}); vxbuild installs wheels only, so no package code runs at build time — publish or build a wheel and pass it with --extra-packages"
    )]
    SourceDistribution {
        name: String,
        version: String,
        file: String,
    },
    #[error("{name} {version}: pip's report gives no sha256 for {url}")]
    NoHash {
        name: String,
        version: String,
        url: String,
    },
    #[error("failed to download {url}")]
    Download {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("failed to download {url}: HTTP {status}")]
    DownloadStatus { url: String, status: u16 },
    #[error("{url} does not match the sha256 pip resolved: expected {expected}, got {actual}")]
    HashMismatch {
        url: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("failed to store a wheel in the cache at {}", path.display())]
    CacheWrite {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("compiling the dependencies to bytecode failed (exit status {status}):\n{stderr}")]
    Compile { status: String, stderr: String },
    #[error(
        "pip failed to install the wheels into the staging root (exit status {status}):\n{stderr}"
    )]
    Install { status: String, stderr: String },
    #[error(
        "{wheel}: the entry {entry:?} would be installed outside the staging root; refusing the wheel"
    )]
    UnsafeWheelEntry { wheel: String, entry: String },
    #[error("{wheel} is not a readable wheel (zip) file")]
    BadWheel {
        wheel: String,
        #[source]
        source: zip::result::ZipError,
    },
    #[error(
        "{url} points into the sandbox at an unexpected place; cannot map it back to a host file"
    )]
    UnmappedLocal { url: String },
    #[error("failed to prepare the pip inputs in {}", path.display())]
    Stage {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Bootstrap(#[from] bootstrap::BootstrapError),
    #[error(transparent)]
    Requirement(#[from] requirements::RequirementError),
    #[error("failed to split the installed files by distribution")]
    Split(#[source] split::SplitError),
}

/// Where pip may look for packages, as the user configured it (flags or PIP_* variables).
#[derive(Debug, Clone, Default)]
pub struct PipOptions {
    pub index_url: Option<String>,
    pub extra_index_urls: Vec<String>,
    pub find_links: Vec<FindLinks>,
    pub no_index: bool,
    /// CA bundle for pip's HTTPS (the host's trust store: behind a TLS-inspecting proxy the base's
    /// bundle does not know the proxy's CA).
    pub ca_bundle: Option<PathBuf>,
    /// Proxy variables passed through to pip (http_proxy, https_proxy, no_proxy …).
    pub proxy_env: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FindLinks {
    Dir(PathBuf),
    Url(String),
}

/// What to install.
#[derive(Debug, Clone, Default)]
pub struct Requirements {
    pub requirements_file: Option<PathBuf>,
    pub specs: Vec<String>,
    pub extra_packages: Vec<PathBuf>,
}

impl Requirements {
    pub fn is_empty(&self) -> bool {
        self.requirements_file.is_none() && self.specs.is_empty() && self.extra_packages.is_empty()
    }
}

/// The base image's interpreter, as it reports itself.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Interpreter {
    /// Path inside the image, e.g. /usr/local/bin/python3.9 (pip writes it into script shebangs).
    pub executable: String,
    pub version: (u32, u32, u32),
    pub pip_version: Option<String>,
    /// sysconfig's install paths (purelib, platlib, scripts, data …).
    pub paths: BTreeMap<String, String>,
    pub platform: String,
    /// PATH used inside the sandbox (the base's own).
    pub path_env: String,
}

impl Interpreter {
    pub fn version_string(&self) -> String {
        format!("{}.{}.{}", self.version.0, self.version.1, self.version.2)
    }
    /// "pip 23.0.1" or "no pip", for messages.
    pub fn pip_description(&self) -> String {
        self.pip_version
            .as_ref()
            .map(|v| format!("pip {v}"))
            .unwrap_or_else(|| "no pip".into())
    }
    /// Whether the base's pip can write `--report`.
    pub fn has_usable_pip(&self) -> bool {
        self.pip_version
            .as_deref()
            .and_then(parse_major_minor)
            .is_some_and(|v| v >= MIN_PIP)
    }
}

fn parse_major_minor(v: &str) -> Option<(u32, u32)> {
    let mut it = v.split('.');
    let major = it.next()?.parse().ok()?;
    let minor = it
        .next()
        .map(|m| {
            m.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
        })
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    Some((major, minor))
}

/// Where a resolved wheel comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WheelSource {
    Url(String),
    Local(PathBuf),
}

/// One distribution, pinned to one wheel file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedWheel {
    pub name: String,
    pub version: String,
    pub filename: String,
    pub sha256: Digest,
    pub source: WheelSource,
    /// Named by the user (rather than pulled in as a dependency).
    pub requested: bool,
    /// A direct reference (a local wheel or a URL), as opposed to an index pick.
    pub direct: bool,
}

/// The resolved set, sorted by normalized name.
#[derive(Debug, Clone)]
pub struct Resolution {
    pub wheels: Vec<PinnedWheel>,
}

/// How pip is run: the base's own, or a bootstrapped wheel.
#[derive(Debug, Clone)]
pub enum PipRunner {
    Base,
    Wheel {
        host_path: PathBuf,
        filename: String,
    },
}

/// Fixed paths inside the sandbox.
const SB_OUT: &str = "/vx/out";
const SB_STAGING: &str = "/vx/staging";

/// PEP 503 name normalization.
pub fn normalize_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut last_sep = false;
    for c in name.chars() {
        if c == '-' || c == '_' || c == '.' {
            if !last_sep {
                out.push('-');
            }
            last_sep = true;
        } else {
            out.push(c.to_ascii_lowercase());
            last_sep = false;
        }
    }
    out
}

const PROBE: &str = r#"
import json, sys, sysconfig
info = {"version": list(sys.version_info[:3]), "executable": sys.executable,
        "paths": sysconfig.get_paths(), "platform": sysconfig.get_platform(), "pip": None}
try:
    import pip
    info["pip"] = pip.__version__
except Exception:
    pass
print(json.dumps(info))
"#;

#[derive(Deserialize)]
struct ProbeOut {
    version: Vec<u32>,
    #[allow(dead_code)]
    executable: String,
    paths: BTreeMap<String, String>,
    platform: String,
    pip: Option<String>,
}

fn base_env(path_env: &str) -> Vec<(String, String)> {
    vec![
        ("PATH".into(), path_env.into()),
        ("HOME".into(), "/tmp".into()),
        ("LANG".into(), "C.UTF-8".into()),
        ("PYTHONDONTWRITEBYTECODE".into(), "1".into()),
        ("PYTHONNOUSERSITE".into(), "1".into()),
        ("SOURCE_DATE_EPOCH".into(), "0".into()),
    ]
}

/// The base's python: the first python3 or python on its PATH, as a path inside the image.
fn find_interpreter(rootfs: &Path, path_env: &str) -> Option<String> {
    path_env
        .split(':')
        .filter(|d| d.starts_with('/'))
        .flat_map(|d| ["python3", "python"].map(|n| format!("{}/{n}", d.trim_end_matches('/'))))
        .find(|p| std::fs::symlink_metadata(rootfs.join(p.trim_start_matches('/'))).is_ok())
}

/// Compile the base's pip into the sandbox's bytecode cache, for a first build on a base: run
/// beside the probe and the resolution (one core is idle then), it takes ~0.3 s off the
/// resolution, which otherwise compiles every module of pip it imports. Best effort: a base
/// without pip, or a Python older than 3.8 (no PYTHONPYCACHEPREFIX), just compiles nothing.
pub async fn warm_pip_bytecode(sandbox: &Sandbox, path_env: &str) {
    let Some(python) = find_interpreter(sandbox.rootfs(), path_env) else {
        return;
    };
    let mut cmd = SandboxCommand::new([
        python.as_str(),
        "-c",
        "import compileall, os, pip; compileall.compile_dir(os.path.dirname(pip.__file__), quiet=2)",
    ]);
    cmd.env = base_env(path_env);
    cmd.python_bytecode = true;
    let _ = sandbox.run(&cmd).await;
}

/// Find the base's interpreter on its PATH and ask it about itself.
pub async fn probe(sandbox: &Sandbox, path_env: &str) -> Result<Interpreter, PythonError> {
    let found =
        find_interpreter(sandbox.rootfs(), path_env).ok_or_else(|| PythonError::NoInterpreter {
            path: path_env.into(),
        })?;
    let rootfs = sandbox.rootfs();
    let mut cmd = SandboxCommand::new([found.as_str(), "-I", "-c", PROBE]);
    cmd.env = base_env(path_env);
    let out = sandbox.run(&cmd).await?;
    if !out.status.success() {
        return Err(PythonError::Probe {
            program: found,
            status: status_text(&out),
            stderr: out.stderr_text(),
        });
    }
    let p: ProbeOut = serde_json::from_slice(&out.stdout).map_err(|_| PythonError::Probe {
        program: found.clone(),
        status: "0".into(),
        stderr: format!(
            "unexpected output: {}",
            String::from_utf8_lossy(&out.stdout)
        ),
    })?;
    let version = (
        p.version.first().copied().unwrap_or(0),
        p.version.get(1).copied().unwrap_or(0),
        p.version.get(2).copied().unwrap_or(0),
    );
    // Prefer the versioned name (python3.9) beside what we found: pip writes sys.executable into
    // script shebangs, and the official images' scripts say #!/usr/local/bin/python3.9.
    let dir = found.rsplit_once('/').map(|(d, _)| d).unwrap_or("/usr/bin");
    let versioned = format!("{dir}/python{}.{}", version.0, version.1);
    let executable =
        if std::fs::symlink_metadata(rootfs.join(versioned.trim_start_matches('/'))).is_ok() {
            versioned
        } else {
            found
        };
    Ok(Interpreter {
        executable,
        version,
        pip_version: p.pip,
        paths: p.paths,
        platform: p.platform,
        path_env: path_env.into(),
    })
}

fn status_text(out: &SandboxOutput) -> String {
    out.status
        .code()
        .map(|c| c.to_string())
        .unwrap_or_else(|| out.status.to_string())
}

/// The sandbox command prefix that runs pip, plus the binds it needs.
fn pip_command(
    interp: &Interpreter,
    runner: &PipRunner,
    args: &[String],
    network: bool,
    opts: &PipOptions,
) -> SandboxCommand {
    let mut argv = vec![interp.executable.clone()];
    let mut cmd = SandboxCommand::default();
    match runner {
        PipRunner::Base => argv.extend(["-m".into(), "pip".into()]),
        PipRunner::Wheel {
            host_path,
            filename,
        } => {
            let dest = format!("/vx/pip/{filename}");
            cmd = cmd.ro(host_path, &dest);
            argv.push(format!("{dest}/pip"));
        }
    }
    argv.extend([
        "--disable-pip-version-check".into(),
        "--no-input".into(),
        "--no-cache-dir".into(),
    ]);
    argv.extend(args.iter().cloned());
    cmd.argv = argv;
    cmd.env = base_env(&interp.path_env);
    cmd.network = network;
    cmd.python_bytecode = interp.version >= (3, 8, 0);
    if network {
        if let Some(ca) = &opts.ca_bundle {
            cmd = cmd.ro(ca, "/vx/ca.pem").env("PIP_CERT", "/vx/ca.pem");
        }
        for (k, v) in &opts.proxy_env {
            cmd = cmd.env(k, v);
        }
    }
    cmd
}

/// The inputs of a resolution, bound into the sandbox read-only.
struct Inputs {
    args: Vec<String>,
    binds: Vec<(PathBuf, String)>,
    /// sandbox path prefix → host folder, to map `file://` URLs back.
    local_dirs: Vec<(String, PathBuf)>,
    /// sandbox path → host file (extra packages).
    local_files: Vec<(String, PathBuf)>,
}

fn inputs(reqs: &Requirements, opts: &PipOptions) -> Result<Inputs, PythonError> {
    let mut i = Inputs {
        args: Vec::new(),
        binds: Vec::new(),
        local_dirs: Vec::new(),
        local_files: Vec::new(),
    };
    if let Some(top) = &reqs.requirements_file {
        let files = requirements::check_requirements_file(top)?;
        let top_dir = top.parent().unwrap_or(Path::new("."));
        for f in &files {
            let rel = f.strip_prefix(top_dir).ok().filter(|r| {
                !r.components()
                    .any(|c| matches!(c, std::path::Component::ParentDir))
            });
            let Some(rel) = rel else {
                return Err(requirements::RequirementError {
                    location: f.display().to_string(),
                    line: String::new(),
                    why: format!("is included from outside {}; keep included requirement files beside requirements.txt", top_dir.display()),
                }
                .into());
            };
            i.binds
                .push((f.clone(), format!("/vx/req/{}", rel.display())));
        }
        let name = top
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        i.args.extend(["-r".into(), format!("/vx/req/{name}")]);
    }
    for s in &reqs.specs {
        requirements::check_cli_spec(s)?;
        i.args.push(s.clone());
    }
    for (n, w) in reqs.extra_packages.iter().enumerate() {
        let filename = w
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let dest = format!("/vx/extra/{n}/{filename}");
        i.binds.push((w.clone(), dest.clone()));
        i.local_files.push((dest.clone(), w.clone()));
        i.args.push(dest);
    }
    if let Some(u) = &opts.index_url {
        i.args.extend(["--index-url".into(), u.clone()]);
    }
    for u in &opts.extra_index_urls {
        i.args.extend(["--extra-index-url".into(), u.clone()]);
    }
    if opts.no_index {
        i.args.push("--no-index".into());
    }
    for (n, f) in opts.find_links.iter().enumerate() {
        match f {
            FindLinks::Url(u) => i.args.extend(["--find-links".into(), u.clone()]),
            FindLinks::Dir(d) => {
                let dest = format!("/vx/links/{n}");
                i.binds.push((d.clone(), dest.clone()));
                i.local_dirs.push((dest.clone(), d.clone()));
                i.args.extend(["--find-links".into(), dest]);
            }
        }
    }
    Ok(i)
}

#[derive(Deserialize)]
struct Report {
    install: Vec<ReportItem>,
}

#[derive(Deserialize)]
struct ReportItem {
    download_info: DownloadInfo,
    #[serde(default)]
    is_direct: bool,
    #[serde(default)]
    requested: bool,
    metadata: ReportMetadata,
}

#[derive(Deserialize)]
struct DownloadInfo {
    url: String,
    #[serde(default)]
    archive_info: Option<ArchiveInfo>,
}

#[derive(Deserialize)]
struct ArchiveInfo {
    #[serde(default)]
    hash: Option<String>,
    #[serde(default)]
    hashes: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
struct ReportMetadata {
    name: String,
    version: String,
}

/// Resolve the requirements to exact wheels, with the base's pip, in the sandbox (network on).
pub async fn resolve(
    sandbox: &Sandbox,
    interp: &Interpreter,
    runner: &PipRunner,
    reqs: &Requirements,
    opts: &PipOptions,
    cache: &Cache,
) -> Result<Resolution, PythonError> {
    if reqs.is_empty() {
        return Ok(Resolution { wheels: Vec::new() });
    }
    let inp = inputs(reqs, opts)?;
    let out_dir = cache
        .tempdir("resolve-")
        .map_err(|source| PythonError::Stage {
            path: cache.tmp_dir(),
            source,
        })?;
    let mut args: Vec<String> = [
        "install",
        "--dry-run",
        "--ignore-installed",
        "--only-binary=:all:",
        "--quiet",
    ]
    .map(String::from)
    .to_vec();
    args.extend(["--report".into(), format!("{SB_OUT}/report.json")]);
    if !matches!(runner, PipRunner::Base) || interp.has_usable_pip() {
        args.push("--root-user-action=ignore".into());
    }
    args.extend(inp.args.iter().cloned());
    let mut cmd = pip_command(interp, runner, &args, true, opts).rw(out_dir.path(), SB_OUT);
    for (h, d) in &inp.binds {
        cmd = cmd.ro(h, d);
    }
    let out = sandbox.run(&cmd).await?;
    if !out.status.success() {
        let stderr = out.stderr_text();
        return Err(PythonError::Resolve {
            status: status_text(&out),
            hint: resolve_hint(&stderr),
            stderr: trim_pip_stderr(&stderr),
        });
    }
    let report_path = out_dir.path().join("report.json");
    let bytes = std::fs::read(&report_path).map_err(|source| PythonError::Read {
        path: report_path.clone(),
        source,
    })?;
    let report: Report = serde_json::from_slice(&bytes).map_err(PythonError::Report)?;
    let mut wheels = Vec::new();
    for item in report.install {
        wheels.push(pin(item, &inp)?);
    }
    wheels.sort_by_key(|w| normalize_name(&w.name));
    Ok(Resolution { wheels })
}

fn pin(item: ReportItem, inp: &Inputs) -> Result<PinnedWheel, PythonError> {
    let url = item.download_info.url.clone();
    let path_part = url.split(['#', '?']).next().unwrap_or(&url);
    let filename = percent_decode(path_part.rsplit('/').next().unwrap_or_default());
    let (name, version) = (item.metadata.name, item.metadata.version);
    if !filename.ends_with(".whl") {
        return Err(PythonError::SourceDistribution {
            name,
            version,
            file: filename,
        });
    }
    let source = if let Some(p) = url.strip_prefix("file://") {
        let p = percent_decode(p);
        let mapped = inp
            .local_files
            .iter()
            .find(|(sb, _)| *sb == p)
            .map(|(_, h)| h.clone())
            .or_else(|| {
                inp.local_dirs
                    .iter()
                    .find_map(|(sb, h)| p.strip_prefix(&format!("{sb}/")).map(|rest| h.join(rest)))
            })
            .ok_or_else(|| PythonError::UnmappedLocal { url: url.clone() })?;
        WheelSource::Local(mapped)
    } else {
        WheelSource::Url(url.clone())
    };
    let from_report = item.download_info.archive_info.and_then(|a| {
        a.hashes.and_then(|h| h.get("sha256").cloned()).or_else(|| {
            a.hash
                .and_then(|h| h.strip_prefix("sha256=").map(String::from))
        })
    });
    let sha256 = match (from_report, &source) {
        (Some(h), _) => Digest::from_hex(&h).map_err(|_| PythonError::NoHash {
            name: name.clone(),
            version: version.clone(),
            url: url.clone(),
        })?,
        (None, WheelSource::Local(p)) => {
            crate::digest::digest_file(p)
                .map_err(|source| PythonError::Read {
                    path: p.clone(),
                    source,
                })?
                .0
        }
        (None, WheelSource::Url(_)) => {
            return Err(PythonError::NoHash {
                name,
                version,
                url: redact_url(&url),
            });
        }
    };
    Ok(PinnedWheel {
        name,
        version,
        filename,
        sha256,
        source,
        requested: item.requested,
        direct: item.is_direct,
    })
}

fn resolve_hint(stderr: &str) -> String {
    let marker = "satisfies the requirement ";
    if let Some(pos) = stderr.find(marker) {
        let rest = &stderr[pos + marker.len()..];
        let name: String = rest
            .chars()
            .take_while(|c| !c.is_whitespace() && *c != '(')
            .collect();
        return format!(
            "\nNo wheel of {name} fits the base image's Python and platform. vxbuild installs wheels only (--only-binary=:all:), so a package published only as a source distribution cannot be installed: pin a version that ships a wheel, or build one and pass it with --extra-packages."
        );
    }
    if stderr.contains("CERTIFICATE_VERIFY_FAILED") {
        return "\npip could not verify the index's TLS certificate: set PIP_CERT or SSL_CERT_FILE to your CA bundle.".into();
    }
    String::new()
}

/// pip's output without its progress noise, at most the last 40 lines.
fn trim_pip_stderr(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(40);
    lines[start..].join("\n")
}

/// Strip credentials from a URL before it goes into a message.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string()
        }
        _ => url.to_string(),
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Some(b) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Put every wheel of the resolution into the cache (downloading, at most `jobs` at once), verified
/// by sha256. Returns the cached path of each wheel, in the resolution's order. Wheels are checked
/// ([`check_wheels`]) before they are installed, not here.
pub async fn fetch_wheels(
    resolution: &Resolution,
    cache: &Cache,
    http: &crate::LazyHttp,
    jobs: usize,
    reporter: &dyn Reporter,
) -> Result<Vec<PathBuf>, PythonError> {
    use futures_util::stream::{self, StreamExt, TryStreamExt};
    let results: Vec<PathBuf> = stream::iter(resolution.wheels.iter())
        .map(|w| fetch_one(w, cache, http, reporter))
        .buffered(jobs.max(1))
        .try_collect()
        .await?;
    Ok(results)
}

/// [`check_wheel_entries`] for each wheel, off the async workers: about how many bytes each
/// installs.
pub async fn check_wheels(paths: &[PathBuf]) -> Result<Vec<u64>, PythonError> {
    let checked = paths.to_vec();
    tokio::task::spawn_blocking(move || checked.iter().map(|p| check_wheel_entries(p)).collect())
        .await
        .expect("wheel check task")
}

/// Refuse a wheel with an entry that is absolute or climbs with `..` (pip refuses most such
/// entries too; this check does not depend on which pip the base has). Returns about how many
/// bytes the wheel takes installed: its entries' sizes (as the central directory says) plus a
/// 4 KiB block per entry.
pub fn check_wheel_entries(path: &Path) -> Result<u64, PythonError> {
    let wheel = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let file = std::fs::File::open(path).map_err(|source| PythonError::Read {
        path: path.into(),
        source,
    })?;
    let archive = zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(|source| {
        PythonError::BadWheel {
            wheel: wheel.clone(),
            source,
        }
    })?;
    let mut archive = archive;
    let mut installed: u64 = 0;
    for i in 0..archive.len() {
        let entry = archive
            .by_index_raw(i)
            .map_err(|source| PythonError::BadWheel {
                wheel: wheel.clone(),
                source,
            })?;
        let name = entry.name().map_err(|source| PythonError::BadWheel {
            wheel: wheel.clone(),
            source,
        })?;
        let unsafe_entry = name.starts_with('/')
            || name.starts_with('\\')
            || name.split(['/', '\\']).any(|c| c == "..");
        if unsafe_entry {
            return Err(PythonError::UnsafeWheelEntry {
                wheel,
                entry: name.to_string(),
            });
        }
        installed = installed.saturating_add(entry.size()).saturating_add(4096);
    }
    Ok(installed)
}

/// The HTTP client for wheel downloads (made on first use), with the error as a download's.
pub fn wheel_client(http: &crate::LazyHttp) -> Result<&reqwest::Client, PythonError> {
    http.get().map_err(|source| PythonError::Download {
        url: "(client setup)".into(),
        source,
    })
}

async fn fetch_one(
    w: &PinnedWheel,
    cache: &Cache,
    http: &crate::LazyHttp,
    reporter: &dyn Reporter,
) -> Result<PathBuf, PythonError> {
    let dest = cache.wheel_path(&w.sha256, &w.filename);
    // Entries are hashed as they are written and renamed into place whole, and pip checks the
    // hash again (`--require-hashes`) whenever it installs one: a present entry is not re-read
    // (that would cost a warm build a pass over every wheel).
    if dest.is_file() {
        return Ok(dest);
    }
    let parent = dest
        .parent()
        .expect("wheel path has a parent")
        .to_path_buf();
    let io_err = |source| PythonError::CacheWrite {
        path: parent.clone(),
        source,
    };
    std::fs::create_dir_all(&parent).map_err(io_err)?;
    let tmp = cache.tempfile().map_err(|source| PythonError::CacheWrite {
        path: cache.tmp_dir(),
        source,
    })?;
    let (tmp, actual, label) = match &w.source {
        WheelSource::Local(p) => {
            let src = p.clone();
            let (tmp, digest) = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
                let mut r = crate::digest::HashingReader::new(std::fs::File::open(&src)?);
                let mut f = tmp.reopen()?;
                std::io::copy(&mut r, &mut f)?;
                Ok((tmp, r.finish().1))
            })
            .await
            .expect("copy task")
            .map_err(|source| PythonError::Read {
                path: p.clone(),
                source,
            })?;
            (tmp, digest, p.display().to_string())
        }
        WheelSource::Url(url) => {
            reporter.info(&format!("Downloading {}", w.filename));
            let shown = redact_url(url);
            let http = wheel_client(http)?;
            let resp = http
                .get(url)
                .send()
                .await
                .map_err(|source| PythonError::Download {
                    url: shown.clone(),
                    source,
                })?;
            if !resp.status().is_success() {
                return Err(PythonError::DownloadStatus {
                    url: shown,
                    status: resp.status().as_u16(),
                });
            }
            let mut file = tokio::fs::File::from_std(tmp.reopen().map_err(|source| {
                PythonError::CacheWrite {
                    path: cache.tmp_dir(),
                    source,
                }
            })?);
            let mut hasher = ChunkHasher::default();
            let mut stream = resp.bytes_stream();
            use futures_util::StreamExt;
            use tokio::io::AsyncWriteExt;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|source| PythonError::Download {
                    url: shown.clone(),
                    source,
                })?;
                hasher.update(&chunk);
                file.write_all(&chunk)
                    .await
                    .map_err(|source| PythonError::CacheWrite {
                        path: cache.tmp_dir(),
                        source,
                    })?;
            }
            file.flush()
                .await
                .map_err(|source| PythonError::CacheWrite {
                    path: cache.tmp_dir(),
                    source,
                })?;
            (tmp, hasher.finish().0, shown)
        }
    };
    if actual != w.sha256 {
        return Err(PythonError::HashMismatch {
            url: label,
            expected: w.sha256.clone(),
            actual,
        });
    }
    cache
        .persist_file(tmp, &dest)
        .map_err(|e| PythonError::CacheWrite {
            path: dest.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
    Ok(dest)
}

/// Install the cached wheels into `staging` with the base's pip, offline, hashes required.
pub async fn install(
    sandbox: &Sandbox,
    interp: &Interpreter,
    runner: &PipRunner,
    resolution: &Resolution,
    wheel_paths: &[PathBuf],
    staging: &Path,
    scratch: &Path,
) -> Result<(), PythonError> {
    if resolution.wheels.is_empty() {
        return Ok(());
    }
    let mut lines = String::new();
    let mut cmd_binds = Vec::new();
    for (w, p) in resolution.wheels.iter().zip(wheel_paths) {
        let dest = format!("/vx/wheels/{}", w.filename);
        lines.push_str(&format!("{dest} --hash=sha256:{}\n", w.sha256.hex()));
        cmd_binds.push((p.clone(), dest));
    }
    let list = scratch.join("install.txt");
    std::fs::write(&list, lines).map_err(|source| PythonError::Stage {
        path: list.clone(),
        source,
    })?;
    let mut args: Vec<String> = [
        "install",
        "--no-deps",
        "--no-index",
        "--require-hashes",
        "--only-binary=:all:",
        "--ignore-installed",
        "--no-compile",
        "--no-warn-script-location",
        "--root-user-action=ignore",
        "--quiet",
    ]
    .map(String::from)
    .to_vec();
    args.extend([
        "--root".into(),
        SB_STAGING.into(),
        "-r".into(),
        "/vx/out/install.txt".into(),
    ]);
    let mut cmd = pip_command(interp, runner, &args, false, &PipOptions::default())
        .rw(staging, SB_STAGING)
        .ro(&list, "/vx/out/install.txt");
    for (h, d) in &cmd_binds {
        cmd = cmd.ro(h, d);
    }
    let out = sandbox.run(&cmd).await?;
    if !out.status.success() {
        return Err(PythonError::Install {
            status: status_text(&out),
            stderr: trim_pip_stderr(&out.stderr_text()),
        });
    }
    let staging = staging.to_path_buf();
    let wheels = resolution.wheels.clone();
    tokio::task::spawn_blocking(move || tidy_dist_infos(&staging, &wheels))
        .await
        .expect("tidy task")
        .map_err(|source| PythonError::Stage {
            path: PathBuf::from("staging root"),
            source,
        })?;
    Ok(())
}

/// Compile every .py under the staging root to .pyc with the base's own python, in the sandbox:
/// `unchecked-hash` pycs (no source mtime inside) with the staging prefix stripped from the paths
/// recorded in them, so two builds of the same wheels give the same bytes.
pub async fn compile_bytecode(
    sandbox: &Sandbox,
    interp: &Interpreter,
    staging: &Path,
) -> Result<(), PythonError> {
    let argv = [
        interp.executable.as_str(),
        "-m",
        "compileall",
        "-q",
        "-j",
        "1",
        "--invalidation-mode",
        "unchecked-hash",
        "-s",
        SB_STAGING,
        "-p",
        "/",
        SB_STAGING,
    ];
    let mut cmd = SandboxCommand::new(argv).rw(staging, SB_STAGING);
    cmd.env = base_env(&interp.path_env);
    let out = sandbox.run(&cmd).await?;
    if !out.status.success() {
        return Err(PythonError::Compile {
            status: status_text(&out),
            stderr: trim_pip_stderr(&out.stderr_text()),
        });
    }
    Ok(())
}

/// pip records every wheel installed from a file as a direct URL (`file:///vx/wheels/…`) and as
/// REQUESTED; make the metadata say what the user asked for instead: index picks are not direct
/// references, and dependencies were not requested. RECORD is kept consistent.
fn tidy_dist_infos(staging: &Path, wheels: &[PinnedWheel]) -> std::io::Result<()> {
    let by_name: BTreeMap<String, &PinnedWheel> = wheels
        .iter()
        .map(|w| (normalize_name(&w.name), w))
        .collect();
    for dist_info in find_dist_infos(staging, 6)? {
        let meta = std::fs::read_to_string(dist_info.join("METADATA")).unwrap_or_default();
        let Some(name) = meta
            .lines()
            .find_map(|l| l.strip_prefix("Name:"))
            .map(|n| normalize_name(n.trim()))
        else {
            continue;
        };
        let Some(w) = by_name.get(&name) else {
            continue;
        };
        let mut drop = Vec::new();
        if !w.direct {
            drop.push("direct_url.json");
        }
        if !w.requested {
            drop.push("REQUESTED");
        }
        let dir_name = dist_info
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let mut removed = Vec::new();
        for f in drop {
            let p = dist_info.join(f);
            if p.exists() {
                std::fs::remove_file(&p)?;
                removed.push(format!("{dir_name}/{f},"));
            }
        }
        if !removed.is_empty() {
            let record = dist_info.join("RECORD");
            if let Ok(text) = std::fs::read_to_string(&record) {
                let kept: String = text
                    .lines()
                    .filter(|l| {
                        !removed
                            .iter()
                            .any(|r| l.ends_with(&r[..r.len() - 1]) || l.contains(r.as_str()))
                    })
                    .map(|l| format!("{l}\n"))
                    .collect();
                std::fs::write(&record, kept)?;
            }
        }
    }
    Ok(())
}

fn find_dist_infos(root: &Path, depth: usize) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    if depth == 0 {
        return Ok(out);
    }
    let mut entries: Vec<_> = std::fs::read_dir(root)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        if !e.file_type()?.is_dir() {
            continue;
        }
        let p = e.path();
        if e.file_name().to_string_lossy().ends_with(".dist-info") {
            out.push(p);
        } else {
            out.extend(find_dist_infos(&p, depth - 1)?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_normalize() {
        assert_eq!(normalize_name("Scikit_Learn"), "scikit-learn");
        assert_eq!(normalize_name("zope.interface"), "zope-interface");
        assert_eq!(normalize_name("a__b"), "a-b");
    }

    #[test]
    fn pip_versions() {
        assert_eq!(parse_major_minor("23.0.1"), Some((23, 0)));
        assert_eq!(parse_major_minor("22.2"), Some((22, 2)));
        assert_eq!(parse_major_minor("9.0.1"), Some((9, 0)));
        assert_eq!(parse_major_minor("24.1b1"), Some((24, 1)));
        assert!((20, 3) < MIN_PIP && (22, 2) >= MIN_PIP && (23, 0) >= MIN_PIP);
    }

    #[test]
    fn percent_and_redaction() {
        assert_eq!(percent_decode("a%2Bb-1.0.whl"), "a+b-1.0.whl");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(
            redact_url("https://user:secret@example.org/simple/"),
            "https://example.org/simple/"
        );
    }

    #[test]
    fn report_items_pin_to_wheels() {
        let inp = Inputs {
            args: vec![],
            binds: vec![],
            local_dirs: vec![("/vx/links/0".into(), "/host/wheels".into())],
            local_files: vec![],
        };
        let item: ReportItem = serde_json::from_str(r#"{"download_info":{"url":"https://files.example/n/numpy-1.26.4-cp39-cp39-manylinux_2_17_x86_64.manylinux2014_x86_64.whl","archive_info":{"hash":"sha256=0000000000000000000000000000000000000000000000000000000000000000","hashes":{"sha256":"1111111111111111111111111111111111111111111111111111111111111111"}}},"is_direct":false,"requested":true,"metadata":{"name":"numpy","version":"1.26.4"}}"#).unwrap();
        let w = pin(item, &inp).unwrap();
        assert_eq!(w.sha256.hex(), "1".repeat(64));
        assert_eq!(
            w.filename,
            "numpy-1.26.4-cp39-cp39-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"
        );
        let item: ReportItem = serde_json::from_str(r#"{"download_info":{"url":"file:///vx/links/0/tiny-1.0-py3-none-any.whl","archive_info":{"hash":"sha256=2222222222222222222222222222222222222222222222222222222222222222"}},"metadata":{"name":"tiny","version":"1.0"}}"#).unwrap();
        let w = pin(item, &inp).unwrap();
        assert_eq!(
            w.source,
            WheelSource::Local("/host/wheels/tiny-1.0-py3-none-any.whl".into())
        );
        let item: ReportItem = serde_json::from_str(r#"{"download_info":{"url":"https://x/foo-1.0.tar.gz","archive_info":{"hash":"sha256=2222222222222222222222222222222222222222222222222222222222222222"}},"metadata":{"name":"foo","version":"1.0"}}"#).unwrap();
        let e = pin(item, &inp).unwrap_err();
        assert!(
            e.to_string()
                .contains("foo 1.0 would be installed from a source distribution"),
            "{e}"
        );
    }

    #[test]
    fn hint_names_the_package() {
        let h = resolve_hint(
            "ERROR: Could not find a version that satisfies the requirement pyyaml-sdist-only (from versions: none)\n",
        );
        assert!(h.contains("No wheel of pyyaml-sdist-only"), "{h}");
    }
}
