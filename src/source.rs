//! The application's files: which files of the project folder go into the image.
//!
//! Vertex AI autopackaging copies the whole project folder into the image, datasets included.
//! [`collect`] walks the folder instead and selects what belongs in an application layer:
//!
//! - `.dockerignore`, `.gcloudignore` and `.vxbuildignore` are honoured with gitignore syntax, in
//!   the project folder and in any folder below it (a deeper file's patterns win; within one
//!   folder `.vxbuildignore` wins over `.gcloudignore`, which wins over `.dockerignore`).
//!   `.gitignore`, `.ignore` and git's global and per-repository excludes are *not* read, and
//!   hidden files are kept: what is committed to git is not what a training job needs.
//! - `.git`, `__pycache__`, `*.pyc`, `*.pyo`, virtualenvs (any folder holding `pyvenv.cfg`) and
//!   [`SourceOptions::exclude`] are always left out, silently.
//! - Files larger than [`SourceOptions::max_file_size`], links that point outside the folder and
//!   special files (sockets, FIFOs, devices) are left out and listed in [`SourceSet::left_out`],
//!   for the CLI to explain with [`LeftOut::describe`].
//! - Links are never followed: a link whose relative target stays inside the folder is kept as a
//!   link; its target is never read.
//! - Modes are normalized (folders 0755, files 0755 or 0644, links 0777) so that neither the umask
//!   nor the machine shows in the image.
//!
//! The walk reads every selected file once to compute [`SourceSet::content_hash`], a key for the
//! application layer's cache. All of it is blocking file system work: call [`collect`] from
//! `spawn_blocking` or a plain thread.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use ignore::Match;
use ignore::gitignore::{Gitignore, GitignoreBuilder};
use sha2::{Digest as _, Sha256};

use crate::digest::{Digest, digest_file};
use crate::layer::{EntryKind, LayerEntry};

/// Ignore files read in every folder of the project, lowest precedence first.
pub const IGNORE_FILES: [&str; 3] = [".dockerignore", ".gcloudignore", ".vxbuildignore"];

/// Normalized modes: nothing of the umask or the machine shows in the image.
const DIR_MODE: u32 = 0o755;
const EXEC_FILE_MODE: u32 = 0o755;
const FILE_MODE: u32 = 0o644;
const SYMLINK_MODE: u32 = 0o777;

/// Version of the serialization behind [`SourceSet::content_hash`]; bump it when that changes.
const CONTENT_HASH_VERSION: &[u8] = b"vxbuild-source-v1\n";

/// Most threads used to hash file contents.
const MAX_HASH_THREADS: usize = 8;

#[derive(Debug, Clone)]
pub struct SourceOptions {
    /// Files larger than this many bytes are left out.
    pub max_file_size: u64,
    /// Absolute paths inside the project folder to leave out silently: the build's own output
    /// and cache folders. Paths outside the folder are ignored.
    pub exclude: Vec<PathBuf>,
}

/// The files selected from a project folder.
#[derive(Debug, Clone)]
pub struct SourceSet {
    /// Paths relative to the project folder, sorted by their bytes. Every entry's parent folders
    /// are entries too; the project folder itself is not an entry.
    pub entries: Vec<LayerEntry>,
    /// What was left out and why, sorted by path. Silent exclusions are not listed.
    pub left_out: Vec<LeftOut>,
    /// sha256 over the entries' paths, modes, kinds, link targets and file contents; independent
    /// of mtimes, the project folder's location and directory order.
    pub content_hash: Digest,
}

/// A file the user may have expected in the image, and why it is not there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeftOut {
    /// Relative to the project folder, `/`-separated.
    pub path: String,
    pub reason: LeftOutReason,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeftOutReason {
    TooLarge {
        size: u64,
        limit: u64,
    },
    /// A link whose target is absolute or leaves the project folder; `target` as the link holds it.
    LinkOutside {
        target: String,
    },
    /// A socket, FIFO or device.
    Special,
}

impl LeftOut {
    /// One line for the user: what was left out, why, and what to do about it.
    pub fn describe(&self) -> String {
        match &self.reason {
            LeftOutReason::TooLarge { size, limit } => format!(
                "{} ({}) is larger than --max-file-size {}; left out of the image \u{2014} raise \
                 --max-file-size to include it, or load it from Cloud Storage at run time",
                self.path,
                format_size(*size),
                format_size(*limit),
            ),
            LeftOutReason::LinkOutside { target } => format!(
                "{} -> {} points outside the project folder; left out (links are never followed)",
                self.path, target
            ),
            LeftOutReason::Special => format!(
                "{} is a socket, FIFO or device, not a file; left out",
                self.path
            ),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("failed to open the project folder {}", path.display())]
    ProjectDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the project folder {} is not a folder", path.display())]
    NotADirectory { path: PathBuf },
    #[error("failed to list the folder {}", path.display())]
    ReadDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} changed while it was being read (expected {expected} bytes, read {read})", path.display())]
    Changed {
        path: PathBuf,
        expected: u64,
        read: u64,
    },
    #[error(
        "the name of {} is not valid UTF-8; rename it, or leave it out with .vxbuildignore",
        path.display()
    )]
    NonUtf8Name { path: PathBuf },
    #[error("the link {} has a target that is not valid UTF-8", path.display())]
    NonUtf8LinkTarget { path: PathBuf },
    #[error("bad ignore file {}{}", file.display(), line.map(|l| format!(", line {l}")).unwrap_or_default())]
    IgnoreFile {
        file: PathBuf,
        line: Option<u64>,
        #[source]
        source: ignore::Error,
    },
}

/// Select the files of the project folder `dir` that go into the image.
///
/// Blocking: reads the whole folder and every selected file once.
pub fn collect(dir: &Path, opts: &SourceOptions) -> Result<SourceSet, SourceError> {
    let root = dir
        .canonicalize()
        .map_err(|source| SourceError::ProjectDir {
            path: dir.to_path_buf(),
            source,
        })?;
    if !root.is_dir() {
        return Err(SourceError::NotADirectory {
            path: dir.to_path_buf(),
        });
    }
    let exclude = opts
        .exclude
        .iter()
        .flat_map(|p| relative_excludes(dir, &root, p))
        .collect();
    let mut walk = Walk {
        max_file_size: opts.max_file_size,
        exclude,
        entries: Vec::new(),
        left_out: Vec::new(),
        ignores: Vec::new(),
    };
    walk.dir(&root, "")?;

    let Walk {
        mut entries,
        mut left_out,
        ..
    } = walk;
    entries.sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
    left_out.sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
    let content_hash = content_hash(&entries)?;
    Ok(SourceSet {
        entries,
        left_out,
        content_hash,
    })
}

struct Walk {
    max_file_size: u64,
    /// `opts.exclude`, relative to the project folder, each in every spelling.
    exclude: Vec<PathBuf>,
    entries: Vec<LayerEntry>,
    left_out: Vec<LeftOut>,
    /// The ignore matchers of the folders from the project folder down to the current one.
    ignores: Vec<Gitignore>,
}

impl Walk {
    /// Visit the folder `abs` (`rel` relative to the project folder, "" for the folder itself).
    fn dir(&mut self, abs: &Path, rel: &str) -> Result<(), SourceError> {
        let ignore = load_ignore_files(abs)?;
        let pushed = !ignore.is_empty();
        if pushed {
            self.ignores.push(ignore);
        }

        let read_dir_err = |source| SourceError::ReadDir {
            path: abs.to_path_buf(),
            source,
        };
        let mut children = Vec::new();
        for child in fs::read_dir(abs).map_err(read_dir_err)? {
            let child = child.map_err(read_dir_err)?;
            let file_type = child.file_type().map_err(|source| SourceError::Read {
                path: child.path(),
                source,
            })?;
            children.push((child.file_name(), file_type));
        }
        // Sorted so that errors and the walk itself do not depend on directory order.
        children.sort_by(|a, b| a.0.as_encoded_bytes().cmp(b.0.as_encoded_bytes()));

        for (name, file_type) in children {
            let child_abs = abs.join(&name);
            let child_rel = Path::new(rel).join(&name);
            let is_dir = file_type.is_dir();
            if self.always_excluded(&name, &child_abs, &child_rel, is_dir)
                || self.ignored(&child_abs, is_dir)
            {
                continue;
            }
            let Some(name) = name.to_str() else {
                return Err(SourceError::NonUtf8Name { path: child_abs });
            };
            let child_rel = if rel.is_empty() {
                name.to_string()
            } else {
                format!("{rel}/{name}")
            };

            if is_dir {
                self.entries.push(LayerEntry {
                    path: child_rel.clone(),
                    mode: DIR_MODE,
                    kind: EntryKind::Dir,
                });
                self.dir(&child_abs, &child_rel)?;
            } else if file_type.is_file() {
                // Hard links are plain files: each name carries its own copy of the content.
                let meta =
                    fs::symlink_metadata(&child_abs).map_err(|source| SourceError::Read {
                        path: child_abs.clone(),
                        source,
                    })?;
                let size = meta.len();
                if size > self.max_file_size {
                    self.left_out.push(LeftOut {
                        path: child_rel,
                        reason: LeftOutReason::TooLarge {
                            size,
                            limit: self.max_file_size,
                        },
                    });
                    continue;
                }
                let mode = if meta.permissions().mode() & 0o111 != 0 {
                    EXEC_FILE_MODE
                } else {
                    FILE_MODE
                };
                self.entries.push(LayerEntry {
                    path: child_rel,
                    mode,
                    kind: EntryKind::File {
                        source: child_abs,
                        size,
                    },
                });
            } else if file_type.is_symlink() {
                let target = fs::read_link(&child_abs).map_err(|source| SourceError::Read {
                    path: child_abs.clone(),
                    source,
                })?;
                if link_stays_inside(rel, &target) {
                    let Some(target) = target.to_str() else {
                        return Err(SourceError::NonUtf8LinkTarget { path: child_abs });
                    };
                    self.entries.push(LayerEntry {
                        path: child_rel,
                        mode: SYMLINK_MODE,
                        kind: EntryKind::Symlink {
                            target: target.to_string(),
                        },
                    });
                } else {
                    self.left_out.push(LeftOut {
                        path: child_rel,
                        reason: LeftOutReason::LinkOutside {
                            target: target.to_string_lossy().into_owned(),
                        },
                    });
                }
            } else {
                self.left_out.push(LeftOut {
                    path: child_rel,
                    reason: LeftOutReason::Special,
                });
            }
        }

        if pushed {
            self.ignores.pop();
        }
        Ok(())
    }

    /// The exclusions that hold whatever the ignore files say; never reported.
    fn always_excluded(&self, name: &OsStr, abs: &Path, rel: &Path, is_dir: bool) -> bool {
        let bytes = name.as_encoded_bytes();
        if bytes == b".git" || bytes == b"__pycache__" {
            return true;
        }
        if !is_dir && (bytes.ends_with(b".pyc") || bytes.ends_with(b".pyo")) {
            return true;
        }
        if self.exclude.iter().any(|e| e == rel) {
            return true;
        }
        // A virtualenv, whatever its name. Its pyvenv.cfg may itself be a link.
        is_dir && fs::symlink_metadata(abs.join("pyvenv.cfg")).is_ok()
    }

    /// Whether the ignore files exclude `abs`. The deepest folder's ignore files decide first,
    /// as in git; folders that are ignored are never entered, so their contents need no check.
    fn ignored(&self, abs: &Path, is_dir: bool) -> bool {
        for ignore in self.ignores.iter().rev() {
            match ignore.matched(abs, is_dir) {
                Match::None => continue,
                Match::Ignore(_) => return true,
                Match::Whitelist(_) => return false,
            }
        }
        false
    }
}

/// Read the ignore files of one folder into a matcher. Any problem with them is an error: a
/// half-read ignore file could put a dataset or a secret into the image.
fn load_ignore_files(dir: &Path) -> Result<Gitignore, SourceError> {
    let mut builder = GitignoreBuilder::new(dir);
    for name in IGNORE_FILES {
        let file = dir.join(name);
        match fs::symlink_metadata(&file) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => return Err(SourceError::Read { path: file, source }),
        }
        if let Some(err) = builder.add(&file) {
            return Err(ignore_file_error(file, err));
        }
    }
    builder
        .build()
        .map_err(|err| ignore_file_error(dir.join(IGNORE_FILES[0]), err))
}

/// Take apart the ignore crate's nested error: the file and line it names, and the cause.
fn ignore_file_error(file: PathBuf, err: ignore::Error) -> SourceError {
    fn unwrap(err: ignore::Error, file: &mut PathBuf, line: &mut Option<u64>) -> ignore::Error {
        match err {
            ignore::Error::Partial(mut errs) if !errs.is_empty() => {
                unwrap(errs.swap_remove(0), file, line)
            }
            ignore::Error::WithPath { path, err } => {
                *file = path;
                unwrap(*err, file, line)
            }
            ignore::Error::WithLineNumber { line: l, err } => {
                *line = Some(l);
                unwrap(*err, file, line)
            }
            ignore::Error::WithDepth { err, .. } => unwrap(*err, file, line),
            other => other,
        }
    }
    let mut file = file;
    let mut line = None;
    let source = unwrap(err, &mut file, &mut line);
    SourceError::IgnoreFile { file, line, source }
}

/// `path` relative to the project folder, if it is inside it (and not the folder itself), in
/// every form it might be spelled in: `path` need not exist, may go through links or `..`, and
/// may start from the project folder as given (`dir`) or as resolved (`root`).
fn relative_excludes(dir: &Path, root: &Path, path: &Path) -> Vec<PathBuf> {
    let mut forms = vec![lexical(path)];
    let resolved = path.canonicalize().ok().or_else(|| {
        // Not there (yet): resolve the folder it would be in.
        let parent = path.parent()?.canonicalize().ok()?;
        Some(parent.join(path.file_name()?))
    });
    forms.extend(resolved);
    let bases = [
        root.to_path_buf(),
        lexical(&std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf())),
    ];
    let mut out: Vec<PathBuf> = forms
        .iter()
        .flat_map(|form| {
            bases
                .iter()
                .filter_map(move |base| form.strip_prefix(base).ok())
        })
        .filter(|rel| !rel.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .collect();
    out.sort();
    out.dedup();
    out
}

/// `path` with `.` dropped and `..` applied to the components before it, without the file system.
fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                if matches!(out.components().next_back(), Some(Component::Normal(_))) {
                    out.pop();
                } else if !out.has_root() {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    out
}

/// Whether a link in the folder `link_dir` (relative to the project folder) with this target
/// stays inside the project folder, resolving `..` lexically. Absolute targets never do.
fn link_stays_inside(link_dir: &str, target: &Path) -> bool {
    let mut depth = Path::new(link_dir).components().count();
    for component in target.components() {
        match component {
            Component::CurDir => {}
            Component::Normal(_) => depth += 1,
            Component::ParentDir => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return false,
            },
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

/// sha256 over a canonical serialization of the entries (in their sorted order): for each, a kind
/// tag, the length-prefixed path, the mode, and the file's size and content digest or the link's
/// length-prefixed target.
fn content_hash(entries: &[LayerEntry]) -> Result<Digest, SourceError> {
    let files: Vec<(&Path, u64)> = entries
        .iter()
        .filter_map(|e| match &e.kind {
            EntryKind::File { source, size } => Some((source.as_path(), *size)),
            _ => None,
        })
        .collect();
    let mut digests = hash_files(&files)?.into_iter();

    let mut h = Sha256::new_with_prefix(CONTENT_HASH_VERSION);
    let put_bytes = |h: &mut Sha256, b: &[u8]| {
        h.update((b.len() as u64).to_be_bytes());
        h.update(b);
    };
    for entry in entries {
        let tag: &[u8] = match entry.kind {
            EntryKind::Dir => b"d",
            EntryKind::File { .. } => b"f",
            EntryKind::Symlink { .. } => b"l",
            EntryKind::Hardlink { .. } => b"h",
        };
        h.update(tag);
        put_bytes(&mut h, entry.path.as_bytes());
        h.update(entry.mode.to_be_bytes());
        match &entry.kind {
            EntryKind::Dir => {}
            EntryKind::File { size, .. } => {
                let digest = digests.next().expect("one digest per file");
                h.update(size.to_be_bytes());
                h.update(digest.hex().as_bytes());
            }
            EntryKind::Symlink { target } | EntryKind::Hardlink { target } => {
                put_bytes(&mut h, target.as_bytes());
            }
        }
    }
    Ok(Digest::from_hasher(h))
}

/// Hash the files on a few threads; the result is in the order given, whatever the thread count.
fn hash_files(files: &[(&Path, u64)]) -> Result<Vec<Digest>, SourceError> {
    let hash_one = |&(path, expected): &(&Path, u64)| {
        let (digest, read) = digest_file(path).map_err(|source| SourceError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        if read != expected {
            return Err(SourceError::Changed {
                path: path.to_path_buf(),
                expected,
                read,
            });
        }
        Ok(digest)
    };
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(MAX_HASH_THREADS);
    if threads <= 1 || files.len() < 2 * threads {
        return files.iter().map(hash_one).collect();
    }
    let chunk = files.len().div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = files
            .chunks(chunk)
            .map(|part| s.spawn(move || part.iter().map(hash_one).collect::<Vec<_>>()))
            .collect();
        let mut out = Vec::with_capacity(files.len());
        for handle in handles {
            for result in handle.join().expect("hashing thread panicked") {
                out.push(result?);
            }
        }
        Ok(out)
    })
}

/// Parse a size such as `10MB`, `10M`, `1.5GB`, `500k`, `1GiB` or `123` (bytes). kB, MB, GB and
/// TB are powers of 1000; KiB, MiB, GiB and TiB powers of 1024; case does not matter, and the
/// trailing `B` may be left out. Fractions are rounded to the nearest byte.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let invalid = |why: &str| {
        format!(
            "invalid size {s:?}: {why}; expected a number with an optional unit: B, kB, MB, GB, \
             TB (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024), e.g. 10MB, 1.5GB, \
             500k, 1GiB"
        )
    };
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    if !number.bytes().any(|b| b.is_ascii_digit()) {
        return Err(invalid("no number"));
    }
    let unit = unit.trim_start().to_ascii_lowercase();
    let multiplier: u128 = match unit.as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "m" | "mb" => 1000u128.pow(2),
        "g" | "gb" => 1000u128.pow(3),
        "t" | "tb" => 1000u128.pow(4),
        "ki" | "kib" => 1 << 10,
        "mi" | "mib" => 1 << 20,
        "gi" | "gib" => 1 << 30,
        "ti" | "tib" => 1 << 40,
        _ => return Err(invalid("unknown unit")),
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if fraction.contains('.') || fraction.len() > 18 {
        return Err(invalid("not a number"));
    }
    let too_large = || invalid("too large");
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| too_large())?
    };
    let mut bytes = whole.checked_mul(multiplier).ok_or_else(too_large)?;
    if !fraction.is_empty() {
        let scale = 10u128.pow(fraction.len() as u32);
        let numerator: u128 = fraction.parse().map_err(|_| invalid("not a number"))?;
        bytes += (numerator * multiplier + scale / 2) / scale;
    }
    u64::try_from(bytes).map_err(|_| too_large())
}

/// A byte count for people: `52.4 MB`, `10 MB`, `1 MiB`, `512 B`. A whole number of the largest
/// decimal or binary unit is shown exactly, so that a limit reads back as it was given.
pub fn format_size(bytes: u64) -> String {
    const DECIMAL: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    const BINARY: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    if bytes < 1000 {
        return format!("{bytes} B");
    }
    for (base, units) in [(1000u64, DECIMAL), (1024, BINARY)] {
        let power = (1..units.len() as u32)
            .rev()
            .find(|&p| bytes >= base.pow(p));
        if let Some(power) = power
            && bytes.is_multiple_of(base.pow(power))
        {
            return format!("{} {}", bytes / base.pow(power), units[power as usize]);
        }
    }
    // One decimal, in the largest decimal unit that shows at least 1.0 after rounding.
    let mut out = String::new();
    for power in (1..DECIMAL.len() as u32).rev() {
        let unit = 1000u128.pow(power);
        let tenths = (bytes as u128 * 10 + unit / 2) / unit;
        if tenths >= 10 || power == 1 {
            let _ = write!(
                out,
                "{}.{} {}",
                tenths / 10,
                tenths % 10,
                DECIMAL[power as usize]
            );
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::os::unix::fs::symlink;

    const NO_LIMIT: SourceOptions = SourceOptions {
        max_file_size: u64::MAX,
        exclude: Vec::new(),
    };

    fn write(root: &Path, rel: &str, content: &str) {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    }

    fn paths(set: &SourceSet) -> Vec<&str> {
        set.entries.iter().map(|e| e.path.as_str()).collect()
    }

    /// The entries without where their files come from, which differs between folders.
    fn portable(set: &SourceSet) -> Vec<(String, u32, String)> {
        set.entries
            .iter()
            .map(|e| {
                let kind = match &e.kind {
                    EntryKind::Dir => "dir".to_string(),
                    EntryKind::File { size, .. } => format!("file {size}"),
                    EntryKind::Symlink { target } => format!("link {target}"),
                    EntryKind::Hardlink { target } => format!("hardlink {target}"),
                };
                (e.path.clone(), e.mode, kind)
            })
            .collect()
    }

    #[test]
    fn ignore_files_of_all_three_kinds_with_negation_anchors_and_nesting() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        write(
            root,
            ".dockerignore",
            "*.csv\n!keep.csv\n/build\ndata/\n**/tmp_*\n# a comment\nsecret.txt\n",
        );
        write(root, ".gcloudignore", "logs/\n");
        // .vxbuildignore has the last word within a folder.
        write(root, ".vxbuildignore", "notes.md\n!secret.txt\n");
        write(root, "sub/.dockerignore", "local.txt\n!nested.csv\n");
        for f in [
            "train.py",
            "big.csv",
            "keep.csv",
            "build/out.o",
            "sub/build/kept.txt",
            "data/x.bin",
            "sub/data",
            "a/b/tmp_scratch",
            "logs/run.log",
            "notes.md",
            "secret.txt",
            "local.txt",
            "sub/local.txt",
            "sub/nested.csv",
            "sub/other.csv",
            ".env",
        ] {
            write(root, f, "x");
        }
        // Not honoured: .gitignore, .ignore, git's own excludes.
        write(root, ".gitignore", "*.py\n");
        write(root, ".ignore", "*.py\n");
        write(root, ".git/info/exclude", "train.py\n");

        let set = collect(root, &NO_LIMIT).unwrap();
        assert_eq!(
            paths(&set),
            [
                ".dockerignore",
                ".env",
                ".gcloudignore",
                ".gitignore",
                ".ignore",
                ".vxbuildignore",
                "a",
                "a/b",
                "keep.csv",
                "local.txt",
                "secret.txt",
                "sub",
                "sub/.dockerignore",
                "sub/build",
                "sub/build/kept.txt",
                "sub/data",
                "sub/nested.csv",
                "train.py",
            ]
        );
        assert!(set.left_out.is_empty());
    }

    #[test]
    fn ignore_files_above_the_project_folder_are_not_read() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), ".dockerignore", "*\n");
        write(tmp.path(), "proj/train.py", "x");
        let set = collect(&tmp.path().join("proj"), &NO_LIMIT).unwrap();
        assert_eq!(paths(&set), ["train.py"]);
    }

    #[test]
    fn bad_ignore_file_is_an_error_naming_file_and_line() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "sub/.gcloudignore", "ok\n# fine\nbad[z-a]\n");
        let err = collect(tmp.path(), &NO_LIMIT).unwrap_err();
        match &err {
            SourceError::IgnoreFile { file, line, .. } => {
                assert!(file.ends_with("sub/.gcloudignore"), "{file:?}");
                assert_eq!(*line, Some(3));
            }
            other => panic!("unexpected error {other:?}"),
        }
        assert!(
            err.to_string().ends_with("sub/.gcloudignore, line 3"),
            "{err}"
        );
    }

    #[test]
    fn ignore_file_that_is_not_utf8_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        // UTF-16, as some Windows editors save it.
        fs::write(
            tmp.path().join(".dockerignore"),
            b"\xff\xfed\x00a\x00t\x00a\x00",
        )
        .unwrap();
        let err = collect(tmp.path(), &NO_LIMIT).unwrap_err();
        assert!(
            matches!(&err, SourceError::IgnoreFile { file, line: Some(1), .. } if file.ends_with(".dockerignore")),
            "{err:?}"
        );
    }

    #[test]
    fn always_left_out_silently() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        for f in [
            "train.py",
            ".git/HEAD",
            "sub/.git",
            "__pycache__/train.cpython-312.pyc",
            "pkg/__pycache__/x.pyc",
            "pkg/__init__.py",
            "pkg/old.pyc",
            "pkg/old.pyo",
            "env/pyvenv.cfg",
            "env/lib/site.py",
            "pkg/.venv/pyvenv.cfg",
            "conf/pyvenv.cfg.example",
        ] {
            write(root, f, "x");
        }
        // A .vxbuildignore cannot bring them back.
        write(root, ".vxbuildignore", "!*.pyc\n!.git\n");
        let set = collect(root, &NO_LIMIT).unwrap();
        assert_eq!(
            paths(&set),
            [
                ".vxbuildignore",
                "conf",
                "conf/pyvenv.cfg.example",
                "pkg",
                "pkg/__init__.py",
                "sub",
                "train.py",
            ]
        );
        assert!(set.left_out.is_empty());
    }

    #[test]
    fn exclude_paths_are_left_out_silently() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        write(root, "train.py", "x");
        write(root, ".vxbuild/cache/blob", "x");
        write(root, "out/image.tar", "x");
        write(root, "out/keep.txt", "x");
        let other = tempfile::tempdir().unwrap();
        let opts = SourceOptions {
            max_file_size: u64::MAX,
            exclude: vec![
                root.join(".vxbuild"),
                // Through a `..`, and a path that does not exist yet.
                root.join("out/../out/image.tar"),
                root.join("out/not-yet"),
                // Outside the project folder: no effect.
                other.path().to_path_buf(),
            ],
        };
        let set = collect(root, &opts).unwrap();
        assert_eq!(paths(&set), ["out", "out/keep.txt", "train.py"]);
        assert!(set.left_out.is_empty());
    }

    #[test]
    fn exclude_paths_match_however_the_project_folder_is_spelled() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().join("real");
        write(&real, "train.py", "x");
        write(&real, "cache/blob", "x");
        let elsewhere = tmp.path().join("elsewhere");
        fs::create_dir(&elsewhere).unwrap();
        // The output folder is a link leading out of the project.
        symlink(&elsewhere, real.join("out")).unwrap();
        // The project folder reached through a link, and excludes spelled through it.
        let via = tmp.path().join("via");
        symlink(&real, &via).unwrap();
        let opts = SourceOptions {
            max_file_size: u64::MAX,
            exclude: vec![via.join("cache"), via.join("out")],
        };
        let set = collect(&via, &opts).unwrap();
        assert_eq!(paths(&set), ["train.py"]);
        assert!(set.left_out.is_empty(), "{:?}", set.left_out);
    }

    #[test]
    fn file_over_the_limit_is_left_out_and_explained() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        write(root, "train.py", "x");
        fs::File::create(root.join("big.bin"))
            .unwrap()
            .set_len(2_000_000)
            .unwrap();
        let opts = SourceOptions {
            max_file_size: parse_size("1MB").unwrap(),
            exclude: vec![],
        };
        let set = collect(root, &opts).unwrap();
        assert_eq!(paths(&set), ["train.py"]);
        assert_eq!(
            set.left_out,
            [LeftOut {
                path: "big.bin".into(),
                reason: LeftOutReason::TooLarge {
                    size: 2_000_000,
                    limit: 1_000_000
                },
            }]
        );
        assert_eq!(
            set.left_out[0].describe(),
            "big.bin (2 MB) is larger than --max-file-size 1 MB; left out of the image \u{2014} \
             raise --max-file-size to include it, or load it from Cloud Storage at run time"
        );
        // Exactly at the limit is fine.
        let opts = SourceOptions {
            max_file_size: 2_000_000,
            exclude: vec![],
        };
        assert_eq!(
            paths(&collect(root, &opts).unwrap()),
            ["big.bin", "train.py"]
        );
    }

    #[test]
    fn links_inside_are_kept_and_links_outside_never_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("proj");
        let outside = tmp.path().join("outside");
        write(&outside, "secret.txt", "do not copy");
        // A FIFO: reading it would block, so the test hangs (and fails) if a link is followed.
        let fifo = outside.join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);

        write(&root, "pkg/mod.py", "x");
        symlink("pkg/mod.py", root.join("alias.py")).unwrap();
        symlink("../mod.py", root.join("pkg/up.py")).unwrap();
        symlink("..", root.join("pkg/root")).unwrap();
        symlink("missing", root.join("dangling")).unwrap();
        symlink("../outside", root.join("data")).unwrap();
        symlink("../../outside/fifo", root.join("pkg/pipe")).unwrap();
        symlink(outside.join("secret.txt"), root.join("abs")).unwrap();
        symlink("pkg/../../outside/secret.txt", root.join("sneaky")).unwrap();

        let (tx, rx) = std::sync::mpsc::channel();
        let walk_root = root.clone();
        std::thread::spawn(move || tx.send(collect(&walk_root, &NO_LIMIT)).unwrap());
        let set = rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("collect blocked: it followed a link")
            .unwrap();

        let link = |target: &str| format!("link {target}");
        let kept: BTreeMap<_, _> = portable(&set)
            .into_iter()
            .map(|(p, m, k)| (p, (m, k)))
            .collect();
        assert_eq!(kept["alias.py"], (0o777, link("pkg/mod.py")));
        assert_eq!(kept["pkg/up.py"], (0o777, link("../mod.py")));
        assert_eq!(kept["pkg/root"], (0o777, link("..")));
        assert_eq!(kept["dangling"], (0o777, link("missing")));
        assert_eq!(
            paths(&set),
            [
                "alias.py",
                "dangling",
                "pkg",
                "pkg/mod.py",
                "pkg/root",
                "pkg/up.py"
            ]
        );

        let abs = outside.join("secret.txt").to_str().unwrap().to_string();
        let outside_link = |path: &str, target: &str| LeftOut {
            path: path.into(),
            reason: LeftOutReason::LinkOutside {
                target: target.into(),
            },
        };
        assert_eq!(
            set.left_out,
            [
                outside_link("abs", &abs),
                outside_link("data", "../outside"),
                outside_link("pkg/pipe", "../../outside/fifo"),
                outside_link("sneaky", "pkg/../../outside/secret.txt"),
            ]
        );
        assert_eq!(
            set.left_out[1].describe(),
            "data -> ../outside points outside the project folder; left out (links are never \
             followed)"
        );
    }

    #[test]
    fn special_files_are_left_out() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "train.py", "x");
        let _socket =
            std::os::unix::net::UnixListener::bind(tmp.path().join("agent.sock")).unwrap();
        let set = collect(tmp.path(), &NO_LIMIT).unwrap();
        assert_eq!(paths(&set), ["train.py"]);
        assert_eq!(
            set.left_out,
            [LeftOut {
                path: "agent.sock".into(),
                reason: LeftOutReason::Special
            }]
        );
        assert_eq!(
            set.left_out[0].describe(),
            "agent.sock is a socket, FIFO or device, not a file; left out"
        );
    }

    #[test]
    fn empty_dirs_kept_hard_links_are_files_modes_normalized() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        write(root, "run.sh", "#!/bin/sh\n");
        fs::set_permissions(root.join("run.sh"), fs::Permissions::from_mode(0o700)).unwrap();
        write(root, "a.txt", "same");
        fs::set_permissions(root.join("a.txt"), fs::Permissions::from_mode(0o600)).unwrap();
        fs::hard_link(root.join("a.txt"), root.join("b.txt")).unwrap();
        fs::create_dir_all(root.join("empty/deeper")).unwrap();
        fs::set_permissions(root.join("empty"), fs::Permissions::from_mode(0o700)).unwrap();

        let set = collect(root, &NO_LIMIT).unwrap();
        assert_eq!(
            portable(&set),
            [
                ("a.txt".into(), 0o644, "file 4".into()),
                ("b.txt".into(), 0o644, "file 4".into()),
                ("empty".into(), 0o755, "dir".into()),
                ("empty/deeper".into(), 0o755, "dir".into()),
                ("run.sh".into(), 0o755, "file 10".into()),
            ]
        );
        let EntryKind::File { source, .. } = &set.entries[1].kind else {
            panic!("not a file")
        };
        assert_eq!(source, &root.canonicalize().unwrap().join("b.txt"));
    }

    /// Build the same project in a fresh folder, creating entries in the given order, with the
    /// given permission bits and mtime.
    fn build_project(
        order: &[usize],
        file_mode: u32,
        dir_mode: u32,
        mtime_secs: u64,
    ) -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let items: [(&str, Option<&str>); 6] = [
            ("train.py", Some("print('train')\n")),
            ("pkg/__init__.py", Some("")),
            ("pkg/model.py", Some("import torch\n")),
            ("scripts/run.sh", Some("#!/bin/sh\n")),
            ("empty", None),
            ("link.py", None),
        ];
        let mtime = std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime_secs);
        for &i in order {
            let (rel, content) = items[i];
            let path = root.join(rel);
            match (rel, content) {
                ("link.py", _) => symlink("pkg/model.py", &path).unwrap(),
                (_, None) => fs::create_dir_all(&path).unwrap(),
                (_, Some(content)) => {
                    fs::create_dir_all(path.parent().unwrap()).unwrap();
                    fs::write(&path, content).unwrap();
                    let exec = if rel.ends_with(".sh") { 0o100 } else { 0 };
                    fs::set_permissions(&path, fs::Permissions::from_mode(file_mode | exec))
                        .unwrap();
                    fs::File::options()
                        .write(true)
                        .open(&path)
                        .unwrap()
                        .set_modified(mtime)
                        .unwrap();
                }
            }
        }
        for dir in ["pkg", "scripts", "empty"] {
            fs::set_permissions(root.join(dir), fs::Permissions::from_mode(dir_mode)).unwrap();
        }
        tmp
    }

    #[test]
    fn same_content_same_hash_whatever_the_folder_order_mtimes_and_umask() {
        let a = build_project(&[0, 1, 2, 3, 4, 5], 0o644, 0o755, 0);
        let b = build_project(&[5, 4, 3, 2, 1, 0], 0o600, 0o700, 1_700_000_000);
        let c = build_project(&[2, 0, 5, 3, 1, 4], 0o664, 0o775, 42);
        let sa = collect(a.path(), &NO_LIMIT).unwrap();
        let sb = collect(b.path(), &NO_LIMIT).unwrap();
        let sc = collect(c.path(), &NO_LIMIT).unwrap();
        assert_eq!(portable(&sa), portable(&sb));
        assert_eq!(portable(&sa), portable(&sc));
        assert_eq!(sa.content_hash, sb.content_hash);
        assert_eq!(sa.content_hash, sc.content_hash);
        assert_eq!(
            paths(&sa),
            [
                "empty",
                "link.py",
                "pkg",
                "pkg/__init__.py",
                "pkg/model.py",
                "scripts",
                "scripts/run.sh",
                "train.py",
            ]
        );

        // And it does change with what goes into the image.
        let changed = |edit: &dyn Fn(&Path)| {
            let d = build_project(&[0, 1, 2, 3, 4, 5], 0o644, 0o755, 0);
            edit(d.path());
            collect(d.path(), &NO_LIMIT).unwrap().content_hash
        };
        let base = &sa.content_hash;
        assert_ne!(
            &changed(&|p| write(p, "train.py", "print('other')\n")),
            base
        );
        assert_ne!(
            &changed(&|p| fs::set_permissions(
                p.join("train.py"),
                fs::Permissions::from_mode(0o755)
            )
            .unwrap()),
            base
        );
        assert_ne!(
            &changed(&|p| fs::create_dir(p.join("empty2")).unwrap()),
            base
        );
        assert_ne!(
            &changed(&|p| {
                fs::remove_file(p.join("link.py")).unwrap();
                symlink("train.py", p.join("link.py")).unwrap();
            }),
            base
        );
        assert_ne!(
            &changed(&|p| fs::rename(p.join("train.py"), p.join("main.py")).unwrap()),
            base
        );
    }

    #[test]
    fn many_files_hash_the_same_as_few() {
        // Enough files to take the threaded path; the hash must not depend on it.
        let tmp = tempfile::tempdir().unwrap();
        for i in 0..100 {
            write(tmp.path(), &format!("f{i:03}.py"), &format!("{i}\n"));
        }
        let set = collect(tmp.path(), &NO_LIMIT).unwrap();
        let files: Vec<(&Path, u64)> = set
            .entries
            .iter()
            .map(|e| match &e.kind {
                EntryKind::File { source, size } => (source.as_path(), *size),
                _ => unreachable!(),
            })
            .collect();
        let sequential: Vec<Digest> = files
            .iter()
            .map(|(p, _)| digest_file(p).unwrap().0)
            .collect();
        assert_eq!(hash_files(&files).unwrap(), sequential);
    }

    #[test]
    fn non_utf8_names_are_an_error_unless_ignored() {
        use std::os::unix::ffi::OsStrExt;
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "train.py", "x");
        let bad = tmp.path().join(OsStr::from_bytes(b"caf\xe9.txt"));
        fs::write(&bad, "x").unwrap();
        let err = collect(tmp.path(), &NO_LIMIT).unwrap_err();
        assert!(
            matches!(&err, SourceError::NonUtf8Name { path } if path.ends_with(bad.file_name().unwrap())),
            "{err:?}"
        );
        write(tmp.path(), ".vxbuildignore", "caf*\n");
        let set = collect(tmp.path(), &NO_LIMIT).unwrap();
        assert_eq!(paths(&set), [".vxbuildignore", "train.py"]);
    }

    #[test]
    fn unreadable_project_folder_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("nope");
        let err = collect(&missing, &NO_LIMIT).unwrap_err();
        assert!(matches!(&err, SourceError::ProjectDir { path, .. } if path == &missing));
        write(tmp.path(), "file", "x");
        let err = collect(&tmp.path().join("file"), &NO_LIMIT).unwrap_err();
        assert!(matches!(err, SourceError::NotADirectory { .. }));
    }

    #[test]
    fn parse_size_accepts_si_and_binary_units() {
        for (input, bytes) in [
            ("123", 123),
            ("0", 0),
            ("10MB", 10_000_000),
            ("10M", 10_000_000),
            ("10mb", 10_000_000),
            ("10 MB", 10_000_000),
            ("1.5GB", 1_500_000_000),
            ("500k", 500_000),
            ("500kB", 500_000),
            ("1GiB", 1 << 30),
            ("1gib", 1 << 30),
            ("2Ki", 2048),
            ("1.5MiB", 1_572_864),
            (".5k", 500),
            ("1.", 1),
            ("7B", 7),
            ("2TB", 2_000_000_000_000),
            ("1.0001k", 1000),
            ("18446744073709551615", u64::MAX),
        ] {
            assert_eq!(parse_size(input), Ok(bytes), "{input}");
        }
    }

    #[test]
    fn parse_size_rejects_with_what_is_accepted() {
        for input in [
            "",
            "MB",
            "abc",
            "-5",
            "10XB",
            "1.2.3",
            "10 M B",
            "1e6",
            "18446744073709551616",
            "20000000TB",
            ".",
        ] {
            let err = parse_size(input).unwrap_err();
            assert!(err.contains(&format!("{input:?}")), "{err}");
            assert!(err.contains("KiB, MiB, GiB"), "{err}");
        }
    }

    #[test]
    fn sizes_read_as_they_were_given() {
        assert_eq!(format_size(52_400_000), "52.4 MB");
        assert_eq!(format_size(10_000_000), "10 MB");
        assert_eq!(format_size(1 << 20), "1 MiB");
        assert_eq!(format_size(512), "512 B");
        assert_eq!(format_size(1500), "1.5 kB");
        assert_eq!(format_size(999_999), "1.0 MB");
        assert_eq!(format_size(1_000_001), "1.0 MB");
        assert_eq!(format_size(2048), "2 KiB");
        assert_eq!(format_size(1010), "1.0 kB");
    }
}
