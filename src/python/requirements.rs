//! A light scan of requirement inputs, before pip sees them: vxbuild installs wheels only, so
//! editable installs, VCS links, local folders and source archives are refused up front, naming the
//! file and line (pip would otherwise build them, running package code at build time).

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{location}: `{line}` {why}")]
pub struct RequirementError {
    pub location: String,
    pub line: String,
    pub why: String,
}

/// Check every logical line of a requirements file, following `-r`/`-c` includes. Returns the
/// files that were read (the top one first), which are all bound into the sandbox.
pub fn check_requirements_file(path: &Path) -> Result<Vec<PathBuf>, RequirementError> {
    let mut seen = Vec::new();
    check_file(path, &mut seen)?;
    Ok(seen)
}

fn check_file(path: &Path, seen: &mut Vec<PathBuf>) -> Result<(), RequirementError> {
    if seen.iter().any(|p| p == path) {
        return Ok(());
    }
    seen.push(path.to_path_buf());
    let text = std::fs::read_to_string(path).map_err(|e| RequirementError {
        location: path.display().to_string(),
        line: String::new(),
        why: format!("cannot be read: {e}"),
    })?;
    for (lineno, line) in logical_lines(&text) {
        let location = format!("{}:{}", path.display(), lineno);
        if let Some(include) = include_target(&line) {
            let target = path.parent().unwrap_or(Path::new(".")).join(include);
            if include.contains("://") {
                return Err(RequirementError {
                    location,
                    line,
                    why: "includes a requirements file by URL; vxbuild reads only local requirement files".into(),
                });
            }
            if !target.is_file() {
                return Err(RequirementError {
                    location,
                    line,
                    why: format!("includes {}, which does not exist", target.display()),
                });
            }
            check_file(&target, seen)?;
            continue;
        }
        check_spec(&line).map_err(|why| RequirementError {
            location,
            line: line.clone(),
            why,
        })?;
    }
    Ok(())
}

/// Check one requirement specifier given on the command line.
pub fn check_cli_spec(spec: &str) -> Result<(), RequirementError> {
    check_spec(spec.trim()).map_err(|why| RequirementError {
        location: "--requirements".into(),
        line: spec.into(),
        why,
    })
}

fn include_target(line: &str) -> Option<&str> {
    for flag in ["-r", "--requirement", "-c", "--constraint"] {
        if let Some(rest) = line.strip_prefix(flag) {
            let rest = rest.strip_prefix('=').unwrap_or(rest);
            if rest.starts_with([' ', '\t'])
                || line.as_bytes().get(flag.len()) == Some(&b'=')
                || (flag.len() == 2 && !rest.is_empty())
            {
                return Some(rest.trim());
            }
        }
    }
    None
}

fn check_spec(line: &str) -> Result<(), String> {
    let lower = line.to_ascii_lowercase();
    if lower.starts_with("-e") || lower.starts_with("--editable") {
        return Err("is an editable install; vxbuild installs wheels only — build a wheel and pass it with --extra-packages".into());
    }
    if line.starts_with('-') {
        // Options such as --index-url, --find-links, --hash and --pre are pip's business.
        return Ok(());
    }
    for vcs in ["git+", "hg+", "svn+", "bzr+"] {
        if lower.contains(vcs) {
            return Err("is a version-control requirement, which pip would build from source; vxbuild installs wheels only — build a wheel and pass it with --extra-packages".into());
        }
    }
    // The requirement proper, before any environment marker or hash option.
    let req = line
        .split(';')
        .next()
        .unwrap_or("")
        .split(" --")
        .next()
        .unwrap_or("")
        .trim();
    let location = match req.split_once('@') {
        Some((_, url)) => url.trim(),
        None => req,
    };
    let looks_like_path = location.starts_with('.')
        || location.starts_with('/')
        || location.starts_with("file:")
        || location.contains('/')
        || location.contains('\\');
    if looks_like_path || location.contains("://") {
        let l = location.to_ascii_lowercase();
        if l.ends_with(".whl") {
            if !location.contains("://") {
                return Err("is a local wheel path; pass local wheels with --extra-packages so they can be bound into the sandbox".into());
            }
            return Ok(());
        }
        if [".tar.gz", ".zip", ".tar.bz2", ".tgz", ".tar"]
            .iter()
            .any(|s| l.ends_with(s))
        {
            return Err("is a source distribution; vxbuild installs wheels only, so no package code runs at build time".into());
        }
        return Err(
            "is a local folder or a link that is not a wheel; vxbuild installs wheels only".into(),
        );
    }
    Ok(())
}

/// Logical lines: comments stripped, `\` continuations joined, blanks dropped; with 1-based numbers.
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut start = 0;
    for (i, raw) in text.lines().enumerate() {
        if current.is_empty() {
            start = i + 1;
        }
        // pip strips comments that start a line or follow whitespace.
        let mut line = raw;
        if line.trim_start().starts_with('#') {
            line = "";
        } else if let Some(pos) = line.find(" #").or_else(|| line.find("\t#")) {
            line = &line[..pos];
        }
        if let Some(stripped) = line.strip_suffix('\\') {
            current.push_str(stripped);
            current.push(' ');
            continue;
        }
        current.push_str(line);
        let l = current.trim().to_string();
        if !l.is_empty() {
            out.push((start, l));
        }
        current.clear();
    }
    let l = current.trim().to_string();
    if !l.is_empty() {
        out.push((start, l));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn plain_requirements_pass_and_includes_are_followed() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "base.txt", "numpy>=1.20  # comment\n");
        let top = write(
            d.path(),
            "requirements.txt",
            "# top\n-r base.txt\nscikit-learn==1.6.1 ; python_version >= \"3.9\"\npandas \\\n  >=2\n--index-url https://example.org/simple\nfoo @ https://example.org/foo-1.0-py3-none-any.whl\n",
        );
        let files = check_requirements_file(&top).unwrap();
        assert_eq!(files, vec![top, d.path().join("base.txt")]);
    }

    #[test]
    fn refuses_sources_naming_file_and_line() {
        let d = tempfile::tempdir().unwrap();
        for (text, needle) in [
            ("numpy\n-e .\n", "editable"),
            (
                "numpy\n\ngit+https://example.org/x.git#egg=x\n",
                "version-control",
            ),
            ("numpy\n./pkg\n", "local folder"),
            (
                "numpy\nhttps://example.org/x-1.0.tar.gz\n",
                "source distribution",
            ),
            ("numpy\n./dist/x-1.0-py3-none-any.whl\n", "--extra-packages"),
            ("numpy\n-r missing.txt\n", "does not exist"),
        ] {
            let p = write(d.path(), "r.txt", text);
            let e = check_requirements_file(&p).unwrap_err();
            assert!(e.why.contains(needle), "{text:?}: {e}");
            assert!(
                e.location.ends_with(":2") || e.location.ends_with(":3"),
                "{e}"
            );
            assert!(e.to_string().contains("r.txt:"), "{e}");
        }
    }

    #[test]
    fn cli_specs() {
        assert!(check_cli_spec("numpy==1.26.4").is_ok());
        assert!(check_cli_spec("torch>=2; sys_platform == 'linux'").is_ok());
        let e = check_cli_spec("git+https://x/y.git").unwrap_err();
        assert_eq!(e.location, "--requirements");
    }
}
