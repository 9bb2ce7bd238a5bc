//! Which distribution installed which file: a staging root that pip filled with several wheels,
//! split by the RECORD of each `.dist-info` (PEP 376/627: every installed file is listed there,
//! scripts and data files included, relative to the site-packages folder).
//!
//! `.pyc` files compiled after the install (`--compile-bytecode`) belong to their `.py`'s owner.
//! A file no RECORD names is an error: nothing else may write to the staging root.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use crate::layer::{EntryKind, LayerEntry, LayerError, entries_from_tree};

use super::normalize_name;

#[derive(Debug, thiserror::Error)]
pub enum SplitError {
    #[error("failed to read {}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("failed to list the installed files")]
    Walk(#[source] LayerError),
    #[error("{} has no Name in its METADATA", path.display())]
    NoName { path: PathBuf },
    #[error("pip installed /{path}, which no distribution's RECORD lists")]
    Unowned { path: String },
}

/// The entries (files and symlinks, paths relative to `staging`) of each distribution, by
/// normalized name.
pub fn split_by_distribution(
    staging: &Path,
) -> Result<BTreeMap<String, Vec<LayerEntry>>, SplitError> {
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|source| SplitError::Read {
            path: path.to_path_buf(),
            source,
        })
    };
    let mut owner: HashMap<String, String> = HashMap::new();
    for dist_info in super::find_dist_infos(staging, 6).map_err(|source| SplitError::Read {
        path: staging.to_path_buf(),
        source,
    })? {
        let meta_path = dist_info.join("METADATA");
        let meta = read(&meta_path)?;
        let name = meta
            .lines()
            .take_while(|l| !l.is_empty())
            .find_map(|l| l.strip_prefix("Name:"))
            .map(|n| normalize_name(n.trim()))
            .ok_or(SplitError::NoName { path: meta_path })?;
        let record = read(&dist_info.join("RECORD"))?;
        let site = dist_info
            .parent()
            .and_then(|p| p.strip_prefix(staging).ok())
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        for line in record.lines() {
            let Some(field) = first_csv_field(line) else {
                continue;
            };
            if let Some(path) = staged_path(&site, &field) {
                owner.insert(path, name.clone());
            }
        }
    }

    let entries = entries_from_tree(staging, "").map_err(SplitError::Walk)?;
    let files: HashMap<&str, &LayerEntry> = entries
        .iter()
        .filter(|e| matches!(e.kind, EntryKind::File { .. }))
        .map(|e| (e.path.as_str(), e))
        .collect();
    let mut out: BTreeMap<String, Vec<LayerEntry>> = BTreeMap::new();
    for e in &entries {
        let entry = match &e.kind {
            EntryKind::Dir => continue,
            // Layers are split, so a hard link may not have its target beside it: a copy.
            EntryKind::Hardlink { target } => match files.get(target.as_str()) {
                Some(t) => LayerEntry {
                    path: e.path.clone(),
                    mode: e.mode,
                    kind: t.kind.clone(),
                },
                None => e.clone(),
            },
            _ => e.clone(),
        };
        let name = owner
            .get(&e.path)
            .or_else(|| pyc_source(&e.path).and_then(|py| owner.get(&py)))
            .ok_or_else(|| SplitError::Unowned {
                path: e.path.clone(),
            })?;
        out.entry(name.clone()).or_default().push(entry);
    }
    Ok(out)
}

/// The first field of a RECORD row (CSV: quoted when it holds a comma or a quote).
fn first_csv_field(line: &str) -> Option<String> {
    let line = line.trim_end_matches('\r');
    if line.is_empty() {
        return None;
    }
    if let Some(rest) = line.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = rest.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    out.push('"');
                    chars.next();
                } else {
                    return Some(out);
                }
            } else {
                out.push(c);
            }
        }
        return None;
    }
    Some(line.split(',').next().unwrap_or("").to_string())
}

/// A RECORD path (relative to the site-packages folder `site`, or absolute) as a path relative to
/// the staging root; `None` if it leaves the root.
fn staged_path(site: &str, record_path: &str) -> Option<String> {
    let joined = if let Some(abs) = record_path.strip_prefix('/') {
        abs.to_string()
    } else {
        format!("{site}/{record_path}")
    };
    let mut parts: Vec<&str> = Vec::new();
    for p in joined.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// `pkg/__pycache__/mod.cpython-39.pyc` → `pkg/mod.py`.
fn pyc_source(path: &str) -> Option<String> {
    let (dir, file) = path.rsplit_once("/__pycache__/")?;
    let stem = file.strip_suffix(".pyc")?.split('.').next()?;
    Some(format!("{dir}/{stem}.py"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_fields_and_paths() {
        assert_eq!(
            first_csv_field("pkg/a.py,sha256=x,12").as_deref(),
            Some("pkg/a.py")
        );
        assert_eq!(
            first_csv_field("\"pkg/a,b \"\"q\"\".py\",sha256=x,1").as_deref(),
            Some("pkg/a,b \"q\".py")
        );
        assert_eq!(first_csv_field(""), None);
        let site = "usr/local/lib/python3.9/site-packages";
        assert_eq!(
            staged_path(site, "../../../bin/tool").as_deref(),
            Some("usr/local/bin/tool")
        );
        assert_eq!(
            staged_path(site, "pkg/./a.py").as_deref(),
            Some("usr/local/lib/python3.9/site-packages/pkg/a.py")
        );
        assert_eq!(
            staged_path(site, "/usr/local/bin/x").as_deref(),
            Some("usr/local/bin/x")
        );
        assert_eq!(staged_path("a", "../../../x"), None);
        assert_eq!(
            pyc_source("s/pkg/__pycache__/mod.cpython-39.pyc").as_deref(),
            Some("s/pkg/mod.py")
        );
    }

    fn install(root: &Path, site: &str, name: &str, files: &[&str]) {
        let sp = root.join(site);
        let di = sp.join(format!("{name}-1.0.dist-info"));
        std::fs::create_dir_all(&di).unwrap();
        std::fs::write(
            di.join("METADATA"),
            format!("Metadata-Version: 2.1\nName: {name}\n\nbody Name: no\n"),
        )
        .unwrap();
        let mut record = String::new();
        for f in files {
            let p = root.join(staged_path(site, f).unwrap());
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, f.as_bytes()).unwrap();
            record.push_str(&format!("{f},sha256=x,1\n"));
        }
        record.push_str(&format!(
            "{name}-1.0.dist-info/METADATA,,\n{name}-1.0.dist-info/RECORD,,\n"
        ));
        std::fs::write(di.join("RECORD"), record).unwrap();
    }

    #[test]
    fn files_go_to_the_distribution_whose_record_lists_them() {
        let tmp = tempfile::tempdir().unwrap();
        let site = "usr/local/lib/python3.9/site-packages";
        install(
            tmp.path(),
            site,
            "alpha_pkg",
            &["alpha/__init__.py", "../../../bin/alpha"],
        );
        install(tmp.path(), site, "beta", &["beta.py"]);
        // Compiled later: belongs to beta.py's owner.
        let pyc = tmp
            .path()
            .join(site)
            .join("__pycache__/beta.cpython-39.pyc");
        std::fs::create_dir_all(pyc.parent().unwrap()).unwrap();
        std::fs::write(&pyc, b"pyc").unwrap();

        let split = split_by_distribution(tmp.path()).unwrap();
        let paths = |n: &str| -> Vec<String> { split[n].iter().map(|e| e.path.clone()).collect() };
        assert_eq!(split.keys().collect::<Vec<_>>(), ["alpha-pkg", "beta"]);
        assert_eq!(
            paths("alpha-pkg"),
            [
                "usr/local/bin/alpha",
                &format!("{site}/alpha/__init__.py"),
                &format!("{site}/alpha_pkg-1.0.dist-info/METADATA"),
                &format!("{site}/alpha_pkg-1.0.dist-info/RECORD"),
            ]
            .map(String::from)
        );
        assert!(paths("beta").contains(&format!("{site}/__pycache__/beta.cpython-39.pyc")));

        // Anything else is an error naming the file.
        std::fs::write(tmp.path().join(site).join("stray.txt"), b"?").unwrap();
        let err = split_by_distribution(tmp.path()).unwrap_err().to_string();
        assert!(err.contains(&format!("/{site}/stray.txt")), "{err}");
    }
}
