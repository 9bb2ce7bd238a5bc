//! A pip for bases whose own is missing or too old for `--report` (22.2+): one pip wheel, picked for
//! the base's Python from the configured index or --find-links folders, cached by sha256 and run
//! straight from the wheel (as ensurepip and virtualenv do). The host's pip is never used.

use std::path::PathBuf;

use serde::Deserialize;

use super::{FindLinks, Interpreter, PipOptions, PipRunner};
use crate::cache::Cache;
use crate::digest::Digest;

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error(
        "the base image's Python has {found}, which cannot write `pip install --report` (pip 22.2+ can), and no pip wheel for Python {python} was found in {searched}"
    )]
    NotFound {
        found: String,
        python: String,
        searched: String,
    },
    #[error("failed to read the package index page {url}")]
    Index {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("failed to read the package index page {url}: HTTP {status}")]
    IndexStatus { url: String, status: u16 },
    #[error("failed to download {url}")]
    Download {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url} does not match its published sha256 (expected {expected}, got {actual})")]
    HashMismatch {
        url: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("failed to store the pip wheel in the cache at {}", path.display())]
    Cache {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

struct Candidate {
    version: Vec<u32>,
    filename: String,
    location: Location,
}

enum Location {
    File(PathBuf),
    Url { url: String, sha256: Option<Digest> },
}

/// Find, fetch and cache a pip wheel that runs on `interp`'s Python.
pub async fn bootstrap_pip(
    interp: &Interpreter,
    opts: &PipOptions,
    cache: &Cache,
    http: &reqwest::Client,
) -> Result<PipRunner, BootstrapError> {
    let py = [interp.version.0, interp.version.1, interp.version.2];
    let mut candidates = Vec::new();
    let mut searched = Vec::new();
    for f in &opts.find_links {
        if let FindLinks::Dir(d) = f {
            searched.push(d.display().to_string());
            for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
                let filename = e.file_name().to_string_lossy().into_owned();
                if let Some(version) = pip_wheel_version(&filename) {
                    candidates.push(Candidate {
                        version,
                        filename,
                        location: Location::File(e.path()),
                    });
                }
            }
        }
    }
    if !opts.no_index {
        let index = opts
            .index_url
            .clone()
            .unwrap_or_else(|| "https://pypi.org/simple".into());
        let url = format!("{}/pip/", index.trim_end_matches('/'));
        searched.push(super::redact_url(&url));
        candidates.extend(index_candidates(http, &url, py).await?);
    }
    candidates.sort_by(|a, b| a.version.cmp(&b.version));
    let Some(best) = candidates.pop() else {
        return Err(BootstrapError::NotFound {
            found: interp.pip_description(),
            python: interp.version_string(),
            searched: if searched.is_empty() {
                "no index (--no-index) and no --find-links folder".into()
            } else {
                searched.join(", ")
            },
        });
    };
    let (bytes, label, expected) = match &best.location {
        Location::File(p) => (
            std::fs::read(p).map_err(|source| BootstrapError::Cache {
                path: p.clone(),
                source,
            })?,
            p.display().to_string(),
            None,
        ),
        Location::Url { url, sha256 } => {
            let resp = http
                .get(url)
                .send()
                .await
                .map_err(|source| BootstrapError::Download {
                    url: super::redact_url(url),
                    source,
                })?;
            let resp = resp
                .error_for_status()
                .map_err(|source| BootstrapError::Download {
                    url: super::redact_url(url),
                    source,
                })?;
            let b = resp
                .bytes()
                .await
                .map_err(|source| BootstrapError::Download {
                    url: super::redact_url(url),
                    source,
                })?;
            (b.to_vec(), super::redact_url(url), sha256.clone())
        }
    };
    let actual = Digest::of(&bytes);
    if let Some(expected) = expected
        && expected != actual
    {
        return Err(BootstrapError::HashMismatch {
            url: label,
            expected,
            actual,
        });
    }
    let dest = cache.pip_wheel_path(&actual, &best.filename);
    if !dest.is_file() {
        let parent = dest.parent().expect("parent").to_path_buf();
        std::fs::create_dir_all(&parent).map_err(|source| BootstrapError::Cache {
            path: parent.clone(),
            source,
        })?;
        let mut tmp = cache.tempfile().map_err(|source| BootstrapError::Cache {
            path: cache.tmp_dir(),
            source,
        })?;
        std::io::Write::write_all(&mut tmp, &bytes).map_err(|source| BootstrapError::Cache {
            path: dest.clone(),
            source,
        })?;
        cache
            .persist_file(tmp, &dest)
            .map_err(|e| BootstrapError::Cache {
                path: dest.clone(),
                source: std::io::Error::other(e.to_string()),
            })?;
    }
    Ok(PipRunner::Wheel {
        host_path: dest,
        filename: best.filename,
    })
}

/// `pip-23.3.2-py3-none-any.whl` → [23, 3, 2]; pre-releases and other files → None.
fn pip_wheel_version(filename: &str) -> Option<Vec<u32>> {
    let rest = filename.strip_prefix("pip-")?;
    let (version, tags) = rest.split_once('-')?;
    if !(tags == "py3-none-any.whl" || tags == "py2.py3-none-any.whl") {
        return None;
    }
    version.split('.').map(|p| p.parse::<u32>().ok()).collect()
}

#[derive(Deserialize)]
struct SimpleJson {
    files: Vec<SimpleFile>,
}

#[derive(Deserialize)]
struct SimpleFile {
    filename: String,
    url: String,
    #[serde(default)]
    hashes: std::collections::BTreeMap<String, String>,
    #[serde(default, rename = "requires-python")]
    requires_python: Option<String>,
    #[serde(default)]
    yanked: serde_json::Value,
}

async fn index_candidates(
    http: &reqwest::Client,
    url: &str,
    py: [u32; 3],
) -> Result<Vec<Candidate>, BootstrapError> {
    let shown = super::redact_url(url);
    let resp = http
        .get(url)
        .header("Accept", "application/vnd.pypi.simple.v1+json")
        .send()
        .await
        .map_err(|source| BootstrapError::Index {
            url: shown.clone(),
            source,
        })?;
    if !resp.status().is_success() {
        return Err(BootstrapError::IndexStatus {
            url: shown,
            status: resp.status().as_u16(),
        });
    }
    let base = resp.url().clone();
    let page: SimpleJson = match resp.json().await {
        Ok(p) => p,
        // An index without PEP 691 JSON: nothing to pick from here.
        Err(_) => return Ok(Vec::new()),
    };
    Ok(page
        .files
        .into_iter()
        .filter(|f| f.yanked.is_null() || f.yanked == serde_json::Value::Bool(false))
        .filter(|f| {
            f.requires_python
                .as_deref()
                .is_none_or(|r| requires_python_allows(r, py))
        })
        .filter_map(|f| {
            let version = pip_wheel_version(&f.filename)?;
            let url = base.join(&f.url).map(|u| u.to_string()).unwrap_or(f.url);
            let sha256 = f
                .hashes
                .get("sha256")
                .and_then(|h| Digest::from_hex(h).ok());
            Some(Candidate {
                version,
                filename: f.filename,
                location: Location::Url { url, sha256 },
            })
        })
        .collect())
}

/// Evaluate a `Requires-Python` specifier set (`>=3.7`, `>=2.7,!=3.0.*,<4`) for a Python version.
pub fn requires_python_allows(spec: &str, py: [u32; 3]) -> bool {
    spec.split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .all(|clause| {
            let (op, ver) = ["===", "==", "!=", "~=", ">=", "<=", ">", "<"]
                .iter()
                .find_map(|op| clause.strip_prefix(op).map(|v| (*op, v.trim())))
                .unwrap_or(("==", clause));
            let wildcard = ver.ends_with(".*");
            let parts: Vec<u32> = ver
                .trim_end_matches(".*")
                .split('.')
                .map(|p| p.parse().unwrap_or(0))
                .collect();
            let mut want = [0u32; 3];
            for (i, p) in parts.iter().take(3).enumerate() {
                want[i] = *p;
            }
            let n = parts.len().min(3);
            let prefix_eq = py[..n] == want[..n];
            match op {
                "==" | "===" if wildcard => prefix_eq,
                "==" | "===" => py == want,
                "!=" if wildcard => !prefix_eq,
                "!=" => py != want,
                ">=" => py >= want,
                "<=" => py <= want,
                ">" => py > want,
                "<" => py < want,
                "~=" => py >= want && py[..n.saturating_sub(1)] == want[..n.saturating_sub(1)],
                _ => true,
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requires_python() {
        assert!(requires_python_allows(">=3.7", [3, 9, 18]));
        assert!(!requires_python_allows(">=3.10", [3, 9, 18]));
        assert!(requires_python_allows(
            ">=2.7,!=3.0.*,!=3.1.*,!=3.2.*,!=3.3.*,!=3.4.*",
            [3, 9, 2]
        ));
        assert!(!requires_python_allows(
            ">=2.7,!=3.0.*,!=3.1.*,!=3.2.*,!=3.3.*,!=3.4.*",
            [3, 4, 1]
        ));
        assert!(requires_python_allows("~=3.8", [3, 9, 0]));
        assert!(!requires_python_allows("<3.9", [3, 9, 0]));
    }

    #[test]
    fn wheel_versions() {
        assert_eq!(
            pip_wheel_version("pip-23.3.2-py3-none-any.whl"),
            Some(vec![23, 3, 2])
        );
        assert_eq!(pip_wheel_version("pip-24.1b1-py3-none-any.whl"), None);
        assert_eq!(pip_wheel_version("pip-23.3.2.tar.gz"), None);
        assert_eq!(pip_wheel_version("pipx-1.0-py3-none-any.whl"), None);
    }
}
