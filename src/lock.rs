//! vxbuild.lock: what a build was resolved to — the base per platform and every wheel — and what
//! the lock was made from, so a later build can reuse it (no resolution, same bytes) or tell that it
//! is stale and say why.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::plan::BuildPlan;
use crate::python::{FindLinks, PinnedWheel, Resolution, WheelSource};

pub const LOCK_FILE: &str = "vxbuild.lock";
pub const LOCK_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("failed to read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a vxbuild lock file: {why}", path.display())]
    Parse { path: PathBuf, why: String },
    #[error("{} was written by a newer vxbuild (lock version {found}; this one reads {LOCK_VERSION})", path.display())]
    Version { path: PathBuf, found: u32 },
    #[error("failed to write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--locked: {} is missing; run `vxbuild lock` and commit it", path.display())]
    Missing { path: PathBuf },
    #[error("--locked: {} is stale: {changes}; run `vxbuild lock` and commit it", path.display())]
    Stale { path: PathBuf, changes: String },
    #[error(
        "vxbuild.lock pins {name} {version} ({wheel}) from {source_kind}, but no file with its sha256 was found in the cache or any --find-links folder"
    )]
    WheelNotFound {
        name: String,
        version: String,
        wheel: String,
        source_kind: String,
    },
    #[error("{what} is not valid: {value}")]
    Invalid { what: String, value: String },
    #[error(transparent)]
    Requirement(#[from] crate::python::requirements::RequirementError),
}

/// What a lock was made from. When any of it changes, the lock is stale.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct LockInputs {
    /// sha256 of requirements.txt and the files it includes ("" when there is none).
    pub requirements_txt: String,
    /// --requirements, as given.
    pub requirements: Vec<String>,
    /// --extra-packages: "PATH sha256:…" each.
    pub extra_packages: Vec<String>,
    pub base_image: String,
    pub platforms: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct LockedBase {
    pub reference: String,
    pub platform: String,
    /// What the reference (tag) pointed at when locked: an index or the manifest itself.
    pub reference_digest: String,
    /// The platform's manifest: the base the build uses.
    pub digest: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct LockedPackage {
    pub name: String,
    pub version: String,
    pub wheel: String,
    pub sha256: String,
    /// "index", "find-links" or "extra-packages".
    pub source: String,
    /// Where an index wheel is downloaded from; for extra packages, the path relative to the project.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default)]
    pub requested: bool,
    #[serde(default)]
    pub direct: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockFile {
    pub version: u32,
    pub inputs: LockInputs,
    #[serde(default)]
    pub base: Vec<LockedBase>,
    #[serde(default)]
    pub package: Vec<LockedPackage>,
}

impl LockFile {
    pub fn base_for(&self, reference: &str, platform: &str) -> Option<&LockedBase> {
        self.base
            .iter()
            .find(|b| b.reference == reference && b.platform == platform)
    }

    /// What changed between the inputs recorded here and `now`, in words; empty when nothing did.
    pub fn changes(&self, now: &LockInputs) -> Vec<String> {
        let was = &self.inputs;
        let mut c = Vec::new();
        if was.requirements_txt != now.requirements_txt {
            c.push("requirements.txt changed".to_string());
        }
        if was.requirements != now.requirements {
            c.push(format!(
                "--requirements changed ({:?} → {:?})",
                was.requirements, now.requirements
            ));
        }
        if was.extra_packages != now.extra_packages {
            c.push("--extra-packages changed".to_string());
        }
        if was.base_image != now.base_image {
            c.push(format!(
                "the base image changed ({} → {})",
                was.base_image, now.base_image
            ));
        }
        if was.platforms != now.platforms {
            c.push(format!(
                "the platforms changed ({} → {})",
                was.platforms.join(","),
                now.platforms.join(",")
            ));
        }
        c
    }

    /// The text written to disk: TOML, sorted, one table per base and per package.
    pub fn to_text(&self) -> String {
        let body = toml::to_string(self).expect("lock file serializes");
        format!(
            "# vxbuild.lock: written by `vxbuild lock` / `vxbuild build`; commit it, do not edit it.\n{body}"
        )
    }
}

/// The inputs of a plan, as a lock records them.
pub fn inputs_of(plan: &BuildPlan) -> Result<LockInputs, LockError> {
    let requirements_txt = match &plan.requirements.requirements_file {
        None => String::new(),
        Some(top) => {
            let files = crate::python::requirements::check_requirements_file(top)?;
            let dir = top.parent().unwrap_or(Path::new("."));
            let mut bytes = Vec::new();
            for f in files {
                let rel = f
                    .strip_prefix(dir)
                    .unwrap_or(&f)
                    .to_string_lossy()
                    .into_owned();
                let content = std::fs::read(&f).map_err(|source| LockError::Read {
                    path: f.clone(),
                    source,
                })?;
                bytes.extend_from_slice(rel.as_bytes());
                bytes.push(0);
                bytes.extend_from_slice(&(content.len() as u64).to_le_bytes());
                bytes.extend_from_slice(&content);
            }
            Digest::of(&bytes).to_string()
        }
    };
    let mut extra_packages = Vec::new();
    for p in &plan.requirements.extra_packages {
        let (d, _) = crate::digest::digest_file(p).map_err(|source| LockError::Read {
            path: p.clone(),
            source,
        })?;
        extra_packages.push(format!("{} {d}", relative(&plan.project_dir, p)));
    }
    Ok(LockInputs {
        requirements_txt,
        requirements: plan.requirements.specs.clone(),
        extra_packages,
        base_image: plan.base.to_string(),
        platforms: vec![plan.platform.to_string()],
    })
}

fn relative(root: &Path, p: &Path) -> String {
    p.strip_prefix(root)
        .unwrap_or(p)
        .to_string_lossy()
        .into_owned()
}

/// Read the lock at `path`; `None` when there is none.
pub fn read(path: &Path) -> Result<Option<LockFile>, LockError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(LockError::Read {
                path: path.into(),
                source,
            });
        }
    };
    #[derive(Deserialize)]
    struct VersionOnly {
        version: u32,
    }
    let v: VersionOnly = toml::from_str(&text).map_err(|e| LockError::Parse {
        path: path.into(),
        why: e.to_string().trim().replace('\n', " "),
    })?;
    if v.version > LOCK_VERSION {
        return Err(LockError::Version {
            path: path.into(),
            found: v.version,
        });
    }
    let lock: LockFile = toml::from_str(&text).map_err(|e| LockError::Parse {
        path: path.into(),
        why: e.to_string().trim().replace('\n', " "),
    })?;
    Ok(Some(lock))
}

/// Write the lock atomically (temp file beside it, then rename).
pub fn write(path: &Path, lock: &LockFile) -> Result<(), LockError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let err = |source| LockError::Write {
        path: path.into(),
        source,
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".vxbuild.lock.")
        .tempfile_in(dir)
        .map_err(err)?;
    std::io::Write::write_all(&mut tmp, lock.to_text().as_bytes()).map_err(err)?;
    tmp.persist(path).map_err(|e| err(e.error))?;
    Ok(())
}

/// Record a resolution.
pub fn packages_of(resolution: &Resolution, plan: &BuildPlan) -> Vec<LockedPackage> {
    let mut out: Vec<LockedPackage> = resolution
        .wheels
        .iter()
        .map(|w| {
            let (source, url) = match &w.source {
                WheelSource::Url(u) => ("index", Some(crate::python::redact_url(u))),
                WheelSource::Local(p) if plan.requirements.extra_packages.contains(p) => {
                    ("extra-packages", Some(relative(&plan.project_dir, p)))
                }
                WheelSource::Local(_) => ("find-links", None),
            };
            LockedPackage {
                name: w.name.clone(),
                version: w.version.clone(),
                wheel: w.filename.clone(),
                sha256: w.sha256.hex().to_string(),
                source: source.into(),
                url,
                requested: w.requested,
                direct: w.direct,
            }
        })
        .collect();
    out.sort_by(|a, b| {
        crate::python::normalize_name(&a.name)
            .cmp(&crate::python::normalize_name(&b.name))
            .then(a.wheel.cmp(&b.wheel))
    });
    out
}

/// Turn locked packages back into a resolution, finding local wheels (cache first, then the
/// --find-links folders, then the project for extra packages) by their sha256.
pub fn resolution_of(
    lock: &LockFile,
    plan: &BuildPlan,
    cache: &crate::cache::Cache,
) -> Result<Resolution, LockError> {
    let mut wheels = Vec::new();
    for p in &lock.package {
        let sha256 = Digest::from_hex(&p.sha256).map_err(|_| LockError::Invalid {
            what: format!("vxbuild.lock: the sha256 of {}", p.name),
            value: p.sha256.clone(),
        })?;
        if p.wheel.contains('/') || !p.wheel.ends_with(".whl") {
            return Err(LockError::Invalid {
                what: format!("vxbuild.lock: the wheel of {}", p.name),
                value: p.wheel.clone(),
            });
        }
        let source = match (p.source.as_str(), &p.url) {
            ("index", Some(url)) => WheelSource::Url(url.clone()),
            _ => {
                let cached = cache.wheel_path(&sha256, &p.wheel);
                let mut candidates = vec![cached];
                if let Some(rel) = p.url.as_ref().filter(|_| p.source == "extra-packages") {
                    candidates.push(plan.project_dir.join(rel));
                }
                for f in &plan.pip.find_links {
                    if let FindLinks::Dir(d) = f {
                        candidates.push(d.join(&p.wheel));
                    }
                }
                // The cache's copy is content-addressed (hashed when it was stored, and pip
                // checks the hash again when it installs): trusted as it is. A user's file is
                // hashed before it counts.
                let found = candidates.into_iter().enumerate().find(|(i, c)| {
                    c.is_file()
                        && (*i == 0
                            || crate::digest::digest_file(c)
                                .map(|(d, _)| d == sha256)
                                .unwrap_or(false))
                });
                let found = found.map(|(_, c)| c);
                match found {
                    Some(path) => WheelSource::Local(path),
                    None => {
                        return Err(LockError::WheelNotFound {
                            name: p.name.clone(),
                            version: p.version.clone(),
                            wheel: p.wheel.clone(),
                            source_kind: p.source.clone(),
                        });
                    }
                }
            }
        };
        wheels.push(PinnedWheel {
            name: p.name.clone(),
            version: p.version.clone(),
            filename: p.wheel.clone(),
            sha256,
            source,
            requested: p.requested,
            direct: p.direct,
        });
    }
    Ok(Resolution { wheels })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> LockFile {
        LockFile {
            version: 1,
            inputs: LockInputs {
                requirements_txt: Digest::of(b"numpy\n").to_string(),
                requirements: vec!["pandas".into()],
                extra_packages: vec![],
                base_image: "docker.io/library/python:3.9-slim".into(),
                platforms: vec!["linux/amd64".into()],
            },
            base: vec![LockedBase {
                reference: "docker.io/library/python:3.9-slim".into(),
                platform: "linux/amd64".into(),
                reference_digest: Digest::of(b"i").to_string(),
                digest: Digest::of(b"m").to_string(),
            }],
            package: vec![LockedPackage {
                name: "numpy".into(),
                version: "2.0.2".into(),
                wheel: "numpy-2.0.2-cp39-cp39-manylinux_2_17_x86_64.whl".into(),
                sha256: "1".repeat(64),
                source: "index".into(),
                url: Some("https://files.example/numpy.whl".into()),
                requested: true,
                direct: false,
            }],
        }
    }

    #[test]
    fn round_trips_and_reads_like_a_diff_friendly_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOCK_FILE);
        write(&path, &sample()).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("[[package]]\nname = \"numpy\"\nversion = \"2.0.2\""),
            "{text}"
        );
        assert!(text.contains("[[base]]"), "{text}");
        assert_eq!(read(&path).unwrap().unwrap(), sample());
        assert!(read(&dir.path().join("none")).unwrap().is_none());
    }

    #[test]
    fn stale_inputs_are_named() {
        let lock = sample();
        assert!(lock.changes(&lock.inputs).is_empty());
        let mut now = lock.inputs.clone();
        now.requirements_txt = Digest::of(b"numpy\nscipy\n").to_string();
        now.base_image = "docker.io/library/python:3.10-slim".into();
        let c = lock.changes(&now).join("; ");
        assert!(
            c.contains("requirements.txt changed") && c.contains("python:3.10-slim"),
            "{c}"
        );
    }

    #[test]
    fn newer_and_broken_locks_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOCK_FILE);
        std::fs::write(&path, "version = 9\n").unwrap();
        assert!(matches!(
            read(&path),
            Err(LockError::Version { found: 9, .. })
        ));
        std::fs::write(&path, "version = 1\ninputs = 3\n").unwrap();
        let e = read(&path).unwrap_err().to_string();
        assert!(e.contains("vxbuild.lock is not a vxbuild lock file"), "{e}");
    }
}
