//! Stage 3: deterministic layers.
//!
//! A layer is a list of [`LayerEntry`]s (usually from [`entries_from_tree`] over a staging root)
//! written by [`write_layer`] as tar → gzip → a cache temp file in one pass, hashing the
//! uncompressed tar (the diff_id) and the compressed stream (the digest) on the way through.
//! Nothing about the machine reaches the bytes: entries are sorted, parents are emitted, owners are
//! root with empty names, modes are fixed, every mtime is [`LayerOptions::mtime`], and gzip runs
//! one compressor at a pinned level with no file name and no timestamp.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use tar::{EntryType, Header};

use crate::cache::{Cache, CacheError};
use crate::digest::{Digest, HashingWriter};
use crate::oci;

/// The gzip level every layer is compressed with. Changing it changes every layer digest.
pub const GZIP_LEVEL: u32 = 6;
/// What a layer's bytes depend on besides its files: part of every layer cache key, so a change
/// here (tar layout, compressor, its backend or settings) never mixes old cached layers with new
/// ones. Bump it with the goldens (golden_digest, testdata/golden.toml).
pub const FORMAT: &str =
    "tar v1; gzip 6 (flate2 zlib-rs 0.6) or zstd 3; 1 MiB blocks; layers format v3";
const BLOCK: u64 = 512;
/// ustar header field sizes.
const NAME_LEN: usize = 100;
const PREFIX_LEN: usize = 155;
/// The largest size a ustar header holds in its 11 octal digits.
const USTAR_MAX_SIZE: u64 = 0o77777777777;
/// The name written in the header of a PAX extended header entry (fixed, so it is deterministic).
const PAX_HEADER_NAME: &[u8] = b"././@PaxHeader";

/// One file-system object in a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerEntry {
    /// Relative, '/'-separated, no leading '/', no trailing '/'.
    pub path: String,
    /// Permission bits (including setuid/setgid/sticky); the file type comes from `kind`.
    pub mode: u32,
    pub kind: EntryKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    /// A regular file whose content is read from `source`, which must hold exactly `size` bytes.
    File {
        source: PathBuf,
        size: u64,
    },
    /// A symbolic link; the target is written as-is.
    Symlink {
        target: String,
    },
    /// A hard link to another `File` entry's path in the same layer.
    Hardlink {
        target: String,
    },
}

#[derive(Debug, Clone, Default)]
pub struct LayerOptions {
    /// The mtime of every entry: SOURCE_DATE_EPOCH, default 0.
    pub mtime: u64,
    /// gzip (default) or zstd.
    pub compression: crate::compress::Codec,
}

/// A finished layer, stored in the cache under its digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerBlob {
    /// sha256 of the compressed blob.
    pub digest: Digest,
    /// sha256 of the uncompressed tar.
    pub diff_id: Digest,
    /// Size of the compressed blob in bytes.
    pub size: u64,
    pub media_type: &'static str,
}

#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("invalid layer path {path:?}: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    #[error("the layer has two entries for {path:?}")]
    Duplicate { path: String },
    #[error("{path:?} is a parent of other layer entries but is not a directory")]
    ParentNotDir { path: String },
    #[error("hard link {path:?} points to {target:?}, which is not a regular file in this layer")]
    HardlinkTarget { path: String, target: String },
    #[error("symlink {path:?} has an invalid target {target:?}")]
    SymlinkTarget { path: String, target: String },
    #[error("failed to read {}", path.display())]
    ReadSource { path: PathBuf, source: io::Error },
    #[error(
        "{} changed size while it was added to the layer: expected {expected} bytes, found {actual}",
        path.display()
    )]
    SizeChanged {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    #[error("failed to walk {}", path.display())]
    Walk { path: PathBuf, source: io::Error },
    #[error("{} is a {kind}, which cannot go into a layer", path.display())]
    UnsupportedFileType { path: PathBuf, kind: &'static str },
    #[error("the file name {} is not valid UTF-8", path.display())]
    NonUtf8Path { path: PathBuf },
    #[error("failed to write the layer")]
    Write(#[source] io::Error),
    #[error("failed to store the layer in the cache")]
    Cache(#[source] CacheError),
}

/// A layer index record (`layers-v1`): the blob a layer key gave.
#[derive(serde::Serialize, serde::Deserialize)]
struct LayerRecord {
    digest: String,
    diff_id: String,
    size: u64,
    media_type: String,
}

impl LayerRecord {
    fn of(b: &LayerBlob) -> Self {
        LayerRecord {
            digest: b.digest.to_string(),
            diff_id: b.diff_id.to_string(),
            size: b.size,
            media_type: b.media_type.to_string(),
        }
    }

    /// The blob, if the record is sound and the blob is still in the cache.
    fn blob(&self, cache: &Cache) -> Option<LayerBlob> {
        let digest: Digest = self.digest.parse().ok()?;
        let diff_id: Digest = self.diff_id.parse().ok()?;
        let media_type = [oci::OCI_LAYER_GZIP, oci::OCI_LAYER_ZSTD]
            .into_iter()
            .find(|m| *m == self.media_type)?;
        cache
            .has_blob(&digest, Some(self.size))
            .then_some(LayerBlob {
                digest,
                diff_id,
                size: self.size,
                media_type,
            })
    }
}

/// The layer an earlier build made from the inputs `key` stands for, if its blob is still cached.
pub fn cached(cache: &Cache, key: &Digest) -> Option<LayerBlob> {
    cache
        .get_record::<LayerRecord>("layers-v1", key)
        .and_then(|r| r.blob(cache))
}

/// Remember that `key`'s inputs gave `blob`. A failure costs a later build some work: a warning.
pub fn remember(
    cache: &Cache,
    key: &Digest,
    blob: &LayerBlob,
    reporter: &dyn crate::report::Reporter,
) {
    if let Err(e) = cache.put_record("layers-v1", key, &LayerRecord::of(blob)) {
        reporter.warn(&format!("could not record a layer in the cache: {e}"));
    }
}

/// Write `entries` as a gzip-compressed tar layer into the cache, in one streaming pass.
///
/// Entries are sorted by path (byte order), missing parent directories are added (mode 0o755),
/// and hard links are rewritten so that each group points at its first path in that order.
pub fn write_layer(
    entries: Vec<LayerEntry>,
    opts: &LayerOptions,
    cache: &Cache,
) -> Result<LayerBlob, LayerError> {
    let entries = normalize(entries)?;

    let tmp = cache.tempfile().map_err(LayerError::Write)?;
    let compressed = HashingWriter::new(BufWriter::with_capacity(1 << 16, tmp));
    let gz = crate::compress::ParallelWriter::with_codec(compressed, opts.compression, GZIP_LEVEL);
    let mut tar = HashingWriter::new(BufWriter::with_capacity(1 << 17, gz));

    let mut buf = vec![0u8; 1 << 17];
    for entry in &entries {
        write_entry(&mut tar, entry, opts.mtime, &mut buf)?;
    }
    // End of archive: two zero blocks.
    tar.write_all(&[0u8; 2 * BLOCK as usize])
        .map_err(LayerError::Write)?;

    let (gz, diff_id, _) = tar.finish();
    let gz = gz
        .into_inner()
        .map_err(|e| LayerError::Write(e.into_error()))?;
    let compressed = gz.finish().map_err(LayerError::Write)?;
    let (file, digest, size) = compressed.finish();
    let tmp = file
        .into_inner()
        .map_err(|e| LayerError::Write(e.into_error()))?;
    cache
        .commit_blob(tmp, &digest, size, None)
        .map_err(LayerError::Cache)?;
    Ok(LayerBlob {
        digest,
        diff_id,
        size,
        media_type: opts.compression.media_type(),
    })
}

/// The entries of a staging tree, each at `prefix + relative path`, with machine-independent modes.
///
/// Symlinks are not followed. Directories get 0o755; files 0o755 if any execute bit is set, else
/// 0o644; symlinks 0o777 with their target as-is. Files sharing an inode become hard links to the
/// first of their paths in sorted order. Sockets, fifos and devices are an error. The root itself
/// is not an entry ([`write_layer`] adds the prefix's directories).
pub fn entries_from_tree(root: &Path, prefix: &str) -> Result<Vec<LayerEntry>, LayerError> {
    let prefix = prefix.trim_matches('/');
    if !prefix.is_empty() {
        validate_path(prefix)?;
    }
    let mut found = Vec::new();
    walk(root, "", &mut found)?;
    found.sort_by(|a, b| a.0.cmp(&b.0));

    let mut inodes: HashMap<(u64, u64), String> = HashMap::new();
    let mut entries = Vec::with_capacity(found.len());
    for (rel, abs, md) in found {
        let path = if prefix.is_empty() {
            rel
        } else {
            format!("{prefix}/{rel}")
        };
        let ft = md.file_type();
        let entry = if ft.is_dir() {
            LayerEntry {
                path,
                mode: 0o755,
                kind: EntryKind::Dir,
            }
        } else if ft.is_symlink() {
            let target = fs::read_link(&abs).map_err(|source| LayerError::Walk {
                path: abs.clone(),
                source,
            })?;
            let target = target
                .into_os_string()
                .into_string()
                .map_err(|_| LayerError::NonUtf8Path { path: abs.clone() })?;
            LayerEntry {
                path,
                mode: 0o777,
                kind: EntryKind::Symlink { target },
            }
        } else if ft.is_file() {
            let mode = if md.mode() & 0o111 != 0 { 0o755 } else { 0o644 };
            let first = if md.nlink() > 1 {
                match inodes.entry((md.dev(), md.ino())) {
                    std::collections::hash_map::Entry::Occupied(o) => Some(o.get().clone()),
                    std::collections::hash_map::Entry::Vacant(v) => {
                        v.insert(path.clone());
                        None
                    }
                }
            } else {
                None
            };
            let kind = match first {
                Some(target) => EntryKind::Hardlink { target },
                None => EntryKind::File {
                    source: abs,
                    size: md.len(),
                },
            };
            LayerEntry { path, mode, kind }
        } else {
            let kind = if ft.is_socket() {
                "socket"
            } else if ft.is_fifo() {
                "fifo"
            } else if ft.is_char_device() {
                "character device"
            } else if ft.is_block_device() {
                "block device"
            } else {
                "special file"
            };
            return Err(LayerError::UnsupportedFileType { path: abs, kind });
        };
        entries.push(entry);
    }
    Ok(entries)
}

/// Collect (relative path, absolute path, lstat) for everything under `dir`, depth first.
fn walk(
    dir: &Path,
    rel: &str,
    out: &mut Vec<(String, PathBuf, fs::Metadata)>,
) -> Result<(), LayerError> {
    let walk_err = |source| LayerError::Walk {
        path: dir.to_path_buf(),
        source,
    };
    let mut children = Vec::new();
    for child in fs::read_dir(dir).map_err(walk_err)? {
        let child = child.map_err(walk_err)?;
        let abs = child.path();
        let name = child
            .file_name()
            .into_string()
            .map_err(|_| LayerError::NonUtf8Path { path: abs.clone() })?;
        children.push((name, abs));
    }
    children.sort();
    for (name, abs) in children {
        let md = fs::symlink_metadata(&abs).map_err(|source| LayerError::Walk {
            path: abs.clone(),
            source,
        })?;
        let child_rel = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        let is_dir = md.is_dir();
        out.push((child_rel.clone(), abs.clone(), md));
        if is_dir {
            walk(&abs, &child_rel, out)?;
        }
    }
    Ok(())
}

fn validate_path(path: &str) -> Result<(), LayerError> {
    let reason = if path.is_empty() {
        Some("the path is empty")
    } else if path.starts_with('/') {
        Some("absolute paths are not allowed")
    } else if path.ends_with('/') {
        Some("the path must not end with '/'")
    } else if path.contains('\0') {
        Some("the path contains a NUL byte")
    } else if path.split('/').any(|c| c == "..") {
        Some("the path has a `..` component")
    } else if path.split('/').any(|c| c.is_empty() || c == ".") {
        Some("the path has an empty or `.` component")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(LayerError::InvalidPath {
            path: path.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Validate, de-duplicate, add parents, fix hard-link groups, and sort by path bytes.
fn normalize(entries: Vec<LayerEntry>) -> Result<Vec<LayerEntry>, LayerError> {
    // `String`'s order is byte order.
    let mut map: BTreeMap<String, LayerEntry> = BTreeMap::new();
    for e in entries {
        validate_path(&e.path)?;
        match &e.kind {
            EntryKind::Symlink { target } if target.is_empty() || target.contains('\0') => {
                return Err(LayerError::SymlinkTarget {
                    path: e.path,
                    target: target.clone(),
                });
            }
            EntryKind::Hardlink { target } => {
                validate_path(target)?;
            }
            _ => {}
        }
        if map.contains_key(&e.path) {
            return Err(LayerError::Duplicate { path: e.path });
        }
        map.insert(e.path.clone(), e);
    }

    // Parents.
    let mut missing = Vec::new();
    for path in map.keys() {
        let mut p = path.as_str();
        while let Some((parent, _)) = p.rsplit_once('/') {
            match map.get(parent) {
                Some(LayerEntry {
                    kind: EntryKind::Dir,
                    ..
                }) => break,
                Some(_) => {
                    return Err(LayerError::ParentNotDir {
                        path: parent.to_string(),
                    });
                }
                None => missing.push(parent.to_string()),
            }
            p = parent;
        }
    }
    for path in missing {
        map.entry(path.clone()).or_insert(LayerEntry {
            path,
            mode: 0o755,
            kind: EntryKind::Dir,
        });
    }

    // Hard links: each must point at a regular file; in the tar, the content goes with the
    // group's first path in sorted order and every other path links to it.
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for e in map.values() {
        if let EntryKind::Hardlink { target } = &e.kind {
            match map.get(target) {
                Some(LayerEntry {
                    kind: EntryKind::File { .. },
                    ..
                }) => groups
                    .entry(target.clone())
                    .or_default()
                    .push(e.path.clone()),
                _ => {
                    return Err(LayerError::HardlinkTarget {
                        path: e.path.clone(),
                        target: target.clone(),
                    });
                }
            }
        }
    }
    for (file, links) in groups {
        // `links` is sorted (collected in map order).
        let first = &links[0];
        if *first < file {
            let content = map.get(&file).expect("checked above").clone();
            for path in links.iter().skip(1).chain(std::iter::once(&file)) {
                map.get_mut(path).expect("present").kind = EntryKind::Hardlink {
                    target: first.clone(),
                };
            }
            let head = map.get_mut(first).expect("present");
            head.kind = content.kind;
            head.mode = content.mode;
        }
    }
    Ok(map.into_values().collect())
}

fn write_entry(
    out: &mut impl Write,
    entry: &LayerEntry,
    mtime: u64,
    buf: &mut [u8],
) -> Result<(), LayerError> {
    let mut name = entry.path.as_bytes().to_vec();
    let (entry_type, size, link) = match &entry.kind {
        EntryKind::Dir => {
            name.push(b'/');
            (EntryType::Directory, 0, None)
        }
        EntryKind::File { size, .. } => (EntryType::Regular, *size, None),
        EntryKind::Symlink { target } => (EntryType::Symlink, 0, Some(target.as_bytes())),
        EntryKind::Hardlink { target } => (EntryType::Link, 0, Some(target.as_bytes())),
    };

    let mut header = base_header(entry_type, entry.mode & 0o7777, mtime, size);
    let mut pax: Vec<(&str, &[u8])> = Vec::new();
    {
        let ustar = header.as_ustar_mut().expect("a ustar header");
        match split_ustar_name(&name) {
            Some((prefix, rest)) => {
                ustar.prefix[..prefix.len()].copy_from_slice(prefix);
                ustar.name[..rest.len()].copy_from_slice(rest);
            }
            None => {
                pax.push(("path", &name));
                ustar.name.copy_from_slice(&name[..NAME_LEN]);
            }
        }
        if let Some(link) = link {
            if link.len() <= NAME_LEN {
                ustar.linkname[..link.len()].copy_from_slice(link);
            } else {
                pax.push(("linkpath", link));
                ustar.linkname.copy_from_slice(&link[..NAME_LEN]);
            }
        }
    }
    let size_record = (size > USTAR_MAX_SIZE).then(|| size.to_string());
    if let Some(s) = &size_record {
        pax.push(("size", s.as_bytes()));
    }
    header.set_cksum();

    if !pax.is_empty() {
        let mut data = Vec::new();
        for (key, value) in &pax {
            pax_record(&mut data, key, value);
        }
        let mut ph = base_header(EntryType::XHeader, 0o644, mtime, data.len() as u64);
        ph.as_ustar_mut().expect("a ustar header").name[..PAX_HEADER_NAME.len()]
            .copy_from_slice(PAX_HEADER_NAME);
        ph.set_cksum();
        out.write_all(ph.as_bytes()).map_err(LayerError::Write)?;
        out.write_all(&data).map_err(LayerError::Write)?;
        pad(out, data.len() as u64)?;
    }

    out.write_all(header.as_bytes())
        .map_err(LayerError::Write)?;
    if let EntryKind::File { source, size } = &entry.kind {
        copy_exact(source, *size, out, buf)?;
        pad(out, *size)?;
    }
    Ok(())
}

/// A ustar header with everything but the names set: owner root with empty names, devices 0.
fn base_header(entry_type: EntryType, mode: u32, mtime: u64, size: u64) -> Header {
    let mut h = Header::new_ustar();
    h.set_entry_type(entry_type);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(mtime);
    h.set_size(size);
    h.set_device_major(0).expect("a ustar header");
    h.set_device_minor(0).expect("a ustar header");
    h
}

/// Split a name into ustar's (prefix, name) fields, or None when it needs a PAX `path` record.
fn split_ustar_name(name: &[u8]) -> Option<(&[u8], &[u8])> {
    if name.len() <= NAME_LEN {
        return Some((&[], name));
    }
    // The split is at a '/': prefix before it (<= 155 bytes), name after it (1..=100 bytes).
    // Search from the left so the name part is as long as possible; the trailing '/' of a
    // directory is not a split point.
    let body = name.strip_suffix(b"/").unwrap_or(name);
    body.iter()
        .enumerate()
        .filter(|(_, b)| **b == b'/')
        .map(|(i, _)| i)
        .find(|&i| i <= PREFIX_LEN && name.len() - i - 1 <= NAME_LEN)
        .map(|i| (&name[..i], &name[i + 1..]))
}

/// Append one PAX record, `"<len> <key>=<value>\n"`, where len counts the whole record.
fn pax_record(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    let base = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = base + base.to_string().len();
    loop {
        let next = base + len.to_string().len();
        if next == len {
            break;
        }
        len = next;
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key.as_bytes());
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

fn pad(out: &mut impl Write, len: u64) -> Result<(), LayerError> {
    let rem = (len % BLOCK) as usize;
    if rem != 0 {
        out.write_all(&[0u8; BLOCK as usize][..BLOCK as usize - rem])
            .map_err(LayerError::Write)?;
    }
    Ok(())
}

/// Copy exactly `size` bytes of `source` into `out`; fail if the file holds fewer or more.
fn copy_exact(
    source: &Path,
    size: u64,
    out: &mut impl Write,
    buf: &mut [u8],
) -> Result<(), LayerError> {
    let read_err = |source_err| LayerError::ReadSource {
        path: source.to_path_buf(),
        source: source_err,
    };
    let mut file = File::open(source).map_err(read_err)?;
    let mut left = size;
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = match file.read(&mut buf[..want]) {
            Ok(0) => {
                return Err(LayerError::SizeChanged {
                    path: source.to_path_buf(),
                    expected: size,
                    actual: size - left,
                });
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_err(e)),
        };
        out.write_all(&buf[..n]).map_err(LayerError::Write)?;
        left -= n as u64;
    }
    // The file must end here.
    let mut probe = [0u8; 1];
    loop {
        match file.read(&mut probe) {
            Ok(0) => return Ok(()),
            Ok(_) => {
                let actual = file.metadata().map(|m| m.len()).unwrap_or(size + 1);
                return Err(LayerError::SizeChanged {
                    path: source.to_path_buf(),
                    expected: size,
                    actual: actual.max(size + 1),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::time::{Duration, SystemTime};

    use flate2::read::GzDecoder;

    fn cache() -> (tempfile::TempDir, Cache) {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        (dir, cache)
    }

    const LONG_DIR: &str = "site-packages/a_package_with_a_rather_long_name_0123456789/and_a_subpackage_with_a_long_name_too";
    const LONG_FILE: &str = "module_with_a_long_name_abcdefghij.py";

    type Step = Box<dyn Fn(&Path)>;

    /// The same tree, built in a given order with given modes and mtimes.
    fn make_tree(root: &Path, reverse: bool, loose_modes: bool, mtime_secs: u64) {
        let (dir_mode, file_mode, exec_mode) = if loose_modes {
            (0o775, 0o664, 0o775)
        } else {
            (0o700, 0o600, 0o700)
        };
        let mut steps: Vec<Step> = vec![
            Box::new(|r| fs::create_dir_all(r.join("bin")).unwrap()),
            Box::new(|r| fs::create_dir_all(r.join("lib/pkg/sub")).unwrap()),
            Box::new(|r| fs::create_dir_all(r.join(LONG_DIR)).unwrap()),
            Box::new(|r| fs::create_dir_all(r.join("empty")).unwrap()),
        ];
        let files: Vec<(&str, &[u8], bool)> = vec![
            ("bin/tool", b"#!/bin/sh\necho hi\n", true),
            ("lib/pkg/__init__.py", b"", false),
            ("lib/pkg/mod.py", b"x = 1\n", false),
            ("lib/pkg/sub/data.bin", &[7u8; 3000], false),
            ("lib/pkg-1.0.dist-info", b"not a dir, sorts between", false),
        ];
        for (p, data, exec) in files {
            steps.push(Box::new(move |r| {
                fs::write(r.join(p), data).unwrap();
                let m = if exec { exec_mode } else { file_mode };
                fs::set_permissions(r.join(p), fs::Permissions::from_mode(m)).unwrap();
            }));
        }
        steps.push(Box::new(|r| {
            fs::write(r.join(LONG_DIR).join(LONG_FILE), b"long").unwrap()
        }));
        steps.push(Box::new(|r| {
            std::os::unix::fs::symlink("pkg/mod.py", r.join("lib/link")).unwrap()
        }));
        steps.push(Box::new(|r| {
            std::os::unix::fs::symlink("/usr/bin/python3", r.join("bin/python")).unwrap()
        }));
        if reverse {
            steps.reverse();
            // Directories must exist before their files: create them first in this order too.
            for d in ["empty", LONG_DIR, "lib/pkg/sub", "bin"] {
                fs::create_dir_all(root.join(d)).unwrap();
            }
        }
        for s in &steps {
            s(root);
        }
        // Hard link after its target exists.
        fs::hard_link(
            root.join("lib/pkg/mod.py"),
            root.join("lib/pkg/a_hardlink.py"),
        )
        .unwrap();
        // Other mtimes and modes on the directories.
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(mtime_secs);
        for p in ["bin/tool", "lib/pkg/mod.py", "lib/pkg/sub/data.bin"] {
            let f = File::options().write(true).open(root.join(p)).unwrap();
            f.set_modified(t).unwrap();
        }
        for d in ["bin", "lib", "lib/pkg", "lib/pkg/sub", "empty"] {
            fs::set_permissions(root.join(d), fs::Permissions::from_mode(dir_mode)).unwrap();
        }
    }

    fn read_back(
        cache: &Cache,
        blob: &LayerBlob,
    ) -> Vec<(String, EntryType, u32, u64, Option<String>)> {
        let f = File::open(cache.blob_path(&blob.digest)).unwrap();
        let mut ar = tar::Archive::new(GzDecoder::new(f));
        let mut out = Vec::new();
        for e in ar.entries().unwrap() {
            let e = e.unwrap();
            let h = e.header();
            assert_eq!(h.uid().unwrap(), 0);
            assert_eq!(h.gid().unwrap(), 0);
            assert_eq!(h.username_bytes(), Some(&b""[..]));
            assert_eq!(h.groupname_bytes(), Some(&b""[..]));
            assert_eq!(h.device_major().unwrap(), Some(0));
            assert!(h.as_ustar().is_some(), "ustar headers only");
            let path = String::from_utf8(e.path_bytes().into_owned()).unwrap();
            let link = e
                .link_name_bytes()
                .map(|l| String::from_utf8(l.into_owned()).unwrap());
            out.push((
                path,
                h.entry_type(),
                h.mode().unwrap(),
                h.mtime().unwrap(),
                link,
            ));
        }
        out
    }

    #[test]
    fn same_tree_in_another_order_place_umask_and_mtime_gives_the_same_layer() {
        let (_c, cache) = cache();
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        make_tree(a.path(), false, true, 1_000_000);
        make_tree(b.path(), true, false, 2_000_000_000);
        let opts = LayerOptions::default();
        let la = write_layer(
            entries_from_tree(a.path(), "usr/local").unwrap(),
            &opts,
            &cache,
        )
        .unwrap();
        let lb = write_layer(
            entries_from_tree(b.path(), "/usr/local/").unwrap(),
            &opts,
            &cache,
        )
        .unwrap();
        assert_eq!(la, lb);
        assert_eq!(la.media_type, oci::OCI_LAYER_GZIP);
        // A different epoch does change the layer.
        let lc = write_layer(
            entries_from_tree(b.path(), "usr/local").unwrap(),
            &LayerOptions {
                mtime: 1_700_000_000,
                ..LayerOptions::default()
            },
            &cache,
        )
        .unwrap();
        assert_ne!(la.diff_id, lc.diff_id);
    }

    #[test]
    fn tar_reads_back_sorted_with_parents_owner_and_mtime() {
        let (_c, cache) = cache();
        let a = tempfile::tempdir().unwrap();
        make_tree(a.path(), false, true, 12345);
        let epoch = 1_700_000_000;
        let blob = write_layer(
            entries_from_tree(a.path(), "usr/local").unwrap(),
            &LayerOptions {
                mtime: epoch,
                ..LayerOptions::default()
            },
            &cache,
        )
        .unwrap();
        let got = read_back(&cache, &blob);
        let paths: Vec<&str> = got.iter().map(|e| e.0.as_str()).collect();
        let long = format!("usr/local/{LONG_DIR}/{LONG_FILE}");
        let expected = vec![
            "usr/",
            "usr/local/",
            "usr/local/bin/",
            "usr/local/bin/python",
            "usr/local/bin/tool",
            "usr/local/empty/",
            "usr/local/lib/",
            "usr/local/lib/link",
            // "pkg" < "pkg-1.0.dist-info" < "pkg/…": sorted by path, parents still come first.
            "usr/local/lib/pkg/",
            "usr/local/lib/pkg-1.0.dist-info",
            "usr/local/lib/pkg/__init__.py",
            "usr/local/lib/pkg/a_hardlink.py",
            "usr/local/lib/pkg/mod.py",
            "usr/local/lib/pkg/sub/",
            "usr/local/lib/pkg/sub/data.bin",
            "usr/local/site-packages/",
            "usr/local/site-packages/a_package_with_a_rather_long_name_0123456789/",
            "usr/local/site-packages/a_package_with_a_rather_long_name_0123456789/and_a_subpackage_with_a_long_name_too/",
            long.as_str(),
        ];
        assert_eq!(paths, expected);
        for (path, ty, mode, mtime, link) in &got {
            assert_eq!(*mtime, epoch, "{path}");
            let want = match path.as_str() {
                p if p.ends_with('/') => (EntryType::Directory, 0o755, None),
                "usr/local/bin/python" => (
                    EntryType::Symlink,
                    0o777,
                    Some("/usr/bin/python3".to_string()),
                ),
                "usr/local/lib/link" => (EntryType::Symlink, 0o777, Some("pkg/mod.py".to_string())),
                "usr/local/bin/tool" => (EntryType::Regular, 0o755, None),
                // The hard link sorts before the file it was made from, so it carries the content.
                "usr/local/lib/pkg/mod.py" => (
                    EntryType::Link,
                    0o644,
                    Some("usr/local/lib/pkg/a_hardlink.py".to_string()),
                ),
                _ => (EntryType::Regular, 0o644, None),
            };
            assert_eq!((*ty, *mode, link.clone()), want, "{path}");
        }
    }

    #[test]
    fn gzip_header_has_no_name_and_no_timestamp_and_diff_id_is_the_tar() {
        let (_c, cache) = cache();
        let a = tempfile::tempdir().unwrap();
        make_tree(a.path(), false, true, 99);
        let blob = write_layer(
            entries_from_tree(a.path(), "app").unwrap(),
            &LayerOptions::default(),
            &cache,
        )
        .unwrap();
        let bytes = fs::read(cache.blob_path(&blob.digest)).unwrap();
        assert_eq!(
            &bytes[..4],
            &[0x1f, 0x8b, 8, 0],
            "gzip magic, deflate, no flags (no name)"
        );
        assert_eq!(&bytes[4..8], &[0, 0, 0, 0], "mtime 0");
        assert_eq!(bytes[9], 255, "OS unknown");
        assert_eq!(Digest::of(&bytes), blob.digest);
        assert_eq!(bytes.len() as u64, blob.size);
        let mut tar = Vec::new();
        GzDecoder::new(&bytes[..]).read_to_end(&mut tar).unwrap();
        assert_eq!(Digest::of(&tar), blob.diff_id);
        assert_eq!(tar.len() % 512, 0);
        assert!(tar.ends_with(&[0u8; 1024]));
    }

    #[test]
    fn long_paths_and_link_targets_round_trip() {
        let (_c, cache) = cache();
        let src = tempfile::tempdir().unwrap();
        let file = src.path().join("f");
        fs::write(&file, b"content").unwrap();
        // > 100 bytes but splittable into ustar prefix/name.
        let split = format!("{}/{}", "d".repeat(90), "f".repeat(90));
        // A single component longer than 100 bytes: needs a PAX path record.
        let pax = format!("x/{}", "p".repeat(150));
        // Deeper than prefix+name can hold.
        let deep = (0..30)
            .map(|i| format!("dir{i:05}"))
            .collect::<Vec<_>>()
            .join("/");
        let long_target = "t/".repeat(80);
        let f = |path: &str| LayerEntry {
            path: path.to_string(),
            mode: 0o644,
            kind: EntryKind::File {
                source: file.clone(),
                size: 7,
            },
        };
        let entries = vec![
            f(&split),
            f(&pax),
            f(&format!("{deep}/file")),
            LayerEntry {
                path: "ln".into(),
                mode: 0o777,
                kind: EntryKind::Symlink {
                    target: long_target.clone(),
                },
            },
            LayerEntry {
                path: "zz_hl".into(),
                mode: 0o644,
                kind: EntryKind::Hardlink {
                    target: pax.clone(),
                },
            },
        ];
        let blob = write_layer(entries, &LayerOptions::default(), &cache).unwrap();
        let got = read_back(&cache, &blob);
        let find = |p: &str| {
            got.iter()
                .find(|e| e.0 == p)
                .unwrap_or_else(|| panic!("{p} missing: {got:?}"))
        };
        assert_eq!(find(&split).1, EntryType::Regular);
        assert_eq!(find(&pax).1, EntryType::Regular);
        assert_eq!(find(&format!("{deep}/file")).1, EntryType::Regular);
        assert!(got.iter().any(|e| e.0 == format!("{deep}/")));
        assert_eq!(find("ln").4.as_deref(), Some(long_target.as_str()));
        assert_eq!(find("zz_hl").4.as_deref(), Some(pax.as_str()));
        // Content survives; no PAX record other than path/linkpath is written.
        let f = File::open(cache.blob_path(&blob.digest)).unwrap();
        let mut ar = tar::Archive::new(GzDecoder::new(f));
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            if let Some(exts) = e.pax_extensions().unwrap() {
                for ext in exts {
                    let key = ext.unwrap().key().unwrap().to_string();
                    assert!(key == "path" || key == "linkpath", "{key}");
                }
            }
            if e.header().entry_type() == EntryType::Regular {
                let mut s = String::new();
                e.read_to_string(&mut s).unwrap();
                assert_eq!(s, "content");
            }
        }
    }

    #[test]
    fn hardlinks_share_content_and_point_at_the_first_path() {
        let (_c, cache) = cache();
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join("m"), b"data").unwrap();
        fs::hard_link(t.path().join("m"), t.path().join("z")).unwrap();
        fs::hard_link(t.path().join("m"), t.path().join("b")).unwrap();
        let entries = entries_from_tree(t.path(), "").unwrap();
        let kinds: Vec<(&str, &EntryKind)> =
            entries.iter().map(|e| (e.path.as_str(), &e.kind)).collect();
        assert!(matches!(kinds[0], ("b", EntryKind::File { size: 4, .. })));
        assert_eq!(kinds[1], ("m", &EntryKind::Hardlink { target: "b".into() }));
        assert_eq!(kinds[2], ("z", &EntryKind::Hardlink { target: "b".into() }));

        // Given by hand with the link sorting first, write_layer moves the content to it.
        let src = t.path().join("m");
        let entries = vec![
            LayerEntry {
                path: "z".into(),
                mode: 0o644,
                kind: EntryKind::File {
                    source: src,
                    size: 4,
                },
            },
            LayerEntry {
                path: "a".into(),
                mode: 0o644,
                kind: EntryKind::Hardlink { target: "z".into() },
            },
            LayerEntry {
                path: "c".into(),
                mode: 0o644,
                kind: EntryKind::Hardlink { target: "z".into() },
            },
        ];
        let blob = write_layer(entries, &LayerOptions::default(), &cache).unwrap();
        let got = read_back(&cache, &blob);
        let got: Vec<(&str, EntryType, Option<&str>)> = got
            .iter()
            .map(|e| (e.0.as_str(), e.1, e.4.as_deref()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("a", EntryType::Regular, None),
                ("c", EntryType::Link, Some("a")),
                ("z", EntryType::Link, Some("a")),
            ]
        );
    }

    #[test]
    fn bad_paths_are_rejected_by_name() {
        let (_c, cache) = cache();
        let dir = |p: &str| LayerEntry {
            path: p.into(),
            mode: 0o755,
            kind: EntryKind::Dir,
        };
        for bad in ["a/../b", "..", "/etc", "a/", "a//b", "./a", ""] {
            let err = write_layer(vec![dir(bad)], &LayerOptions::default(), &cache).unwrap_err();
            assert!(
                matches!(&err, LayerError::InvalidPath { path, .. } if path == bad),
                "{bad}: {err}"
            );
        }
        let err = write_layer(
            vec![LayerEntry {
                path: "l".into(),
                mode: 0o644,
                kind: EntryKind::Hardlink {
                    target: "../outside".into(),
                },
            }],
            &LayerOptions::default(),
            &cache,
        )
        .unwrap_err();
        assert!(err.to_string().contains("../outside"), "{err}");
        let err =
            write_layer(vec![dir("a"), dir("a")], &LayerOptions::default(), &cache).unwrap_err();
        assert!(matches!(err, LayerError::Duplicate { path } if path == "a"));
        let err = write_layer(
            vec![
                LayerEntry {
                    path: "a".into(),
                    mode: 0o777,
                    kind: EntryKind::Symlink { target: "b".into() },
                },
                dir("a/c"),
            ],
            &LayerOptions::default(),
            &cache,
        )
        .unwrap_err();
        assert!(matches!(err, LayerError::ParentNotDir { path } if path == "a"));
        // Nothing half-written is left behind in the blob store.
        assert_eq!(
            fs::read_dir(cache.root().join("blobs-v1/sha256"))
                .unwrap()
                .count(),
            0
        );
    }

    /// Pins the bytes: a change of compressor backend, level or header layout shows up here.
    #[test]
    fn golden_digest() {
        let (_c, cache) = cache();
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join("data"), "hello layer\n".repeat(100)).unwrap();
        let entries = vec![
            LayerEntry {
                path: "app/data".into(),
                mode: 0o644,
                kind: EntryKind::File {
                    source: t.path().join("data"),
                    size: 1200,
                },
            },
            LayerEntry {
                path: "app/link".into(),
                mode: 0o777,
                kind: EntryKind::Symlink {
                    target: "data".into(),
                },
            },
        ];
        let blob = write_layer(entries, &LayerOptions::default(), &cache).unwrap();
        assert_eq!(
            blob.diff_id.as_str(),
            "sha256:4b3ba342d417e03704c248b85a4f30944a085c15457af191896ceaa87c745e8c"
        );
        assert_eq!(
            blob.digest.as_str(),
            "sha256:f6a7ed2913aa8e67f6109303d66e87b9ac0c7d65f58ad60e1a545e8728cef69f"
        );
    }

    /// Pins the parallel gzip format (fixed blocks, sync-flushed): a layer of several blocks.
    #[test]
    fn golden_digest_of_a_multi_block_layer() {
        let (_c, cache) = cache();
        let t = tempfile::tempdir().unwrap();
        let mut x: u32 = 7;
        let data: Vec<u8> = (0..(3 << 20) + 4321)
            .map(|i| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                if i % 5 == 0 {
                    b'\n'
                } else {
                    b'a' + ((x >> 16) % 26) as u8
                }
            })
            .collect();
        fs::write(t.path().join("big"), &data).unwrap();
        let entries = vec![LayerEntry {
            path: "big".into(),
            mode: 0o644,
            kind: EntryKind::File {
                source: t.path().join("big"),
                size: data.len() as u64,
            },
        }];
        let blob = write_layer(entries, &LayerOptions::default(), &cache).unwrap();
        assert_eq!(
            blob.digest.as_str(),
            "sha256:b40d9ecf07670b90457b8d3c01bfe0a8301511624a1ac5b7ea841d22f94f2906"
        );
    }

    #[test]
    fn a_file_that_changes_size_is_an_error_naming_it() {
        let (_c, cache) = cache();
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("grows");
        fs::write(&p, b"0123456789").unwrap();
        for declared in [5, 20] {
            let err = write_layer(
                vec![LayerEntry {
                    path: "f".into(),
                    mode: 0o644,
                    kind: EntryKind::File {
                        source: p.clone(),
                        size: declared,
                    },
                }],
                &LayerOptions::default(),
                &cache,
            )
            .unwrap_err();
            match err {
                LayerError::SizeChanged {
                    path,
                    expected,
                    actual,
                } => {
                    assert_eq!(path, p);
                    assert_eq!(expected, declared);
                    assert_eq!(actual, 10);
                }
                other => panic!("{other}"),
            }
        }
    }

    #[test]
    fn special_files_in_a_tree_are_an_error_naming_them() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir(t.path().join("d")).unwrap();
        let sock = t.path().join("d/sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let err = entries_from_tree(t.path(), "").unwrap_err();
        assert!(
            matches!(&err, LayerError::UnsupportedFileType { path, kind: "socket" } if *path == sock),
            "{err}"
        );
    }

    /// `cargo test --release --lib layer::tests::throughput -- --ignored --nocapture`
    #[test]
    #[ignore]
    #[allow(clippy::print_stderr)]
    fn throughput() {
        let (_c, cache) = cache();
        let t = tempfile::tempdir().unwrap();
        // ~200 MB: 10k small text-like files (~50 MB), 40 semi-compressible binaries (~100 MB),
        // incompressible "weights" for the rest.
        let mut state = 0x9e3779b97f4a7c15u64;
        let mut rand = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut total = 0u64;
        for i in 0..10_000 {
            let d = t.path().join(format!("pkg{}/sub{}", i % 50, i % 7));
            fs::create_dir_all(&d).unwrap();
            let text: String = (0..(rand() % 1500))
                .map(|_| {
                    [
                        "def ",
                        "return ",
                        "self",
                        ".x",
                        " = ",
                        "\n    ",
                        "import numpy\n",
                    ][(rand() % 7) as usize]
                })
                .collect();
            total += text.len() as u64;
            fs::write(d.join(format!("m{i}.py")), text).unwrap();
        }
        for i in 0..40 {
            let n = 2_000_000 + (rand() % 1_000_000) as usize;
            let data: Vec<u8> = (0..n)
                .map(|j| {
                    if j % 3 == 0 {
                        (rand() & 0xff) as u8
                    } else {
                        (j % 251) as u8
                    }
                })
                .collect();
            total += n as u64;
            fs::write(t.path().join(format!("lib{i}.so")), data).unwrap();
        }
        while total < 200_000_000 {
            let n = 10_000_000;
            let data: Vec<u8> = (0..n / 8).flat_map(|_| rand().to_le_bytes()).collect();
            total += n as u64;
            fs::write(t.path().join(format!("weights{total}.bin")), data).unwrap();
        }
        let start = std::time::Instant::now();
        let entries = entries_from_tree(t.path(), "usr/local").unwrap();
        let walked = start.elapsed();
        let blob = write_layer(entries, &LayerOptions::default(), &cache).unwrap();
        let secs = start.elapsed().as_secs_f64();
        eprintln!(
            "{total} bytes in {secs:.2}s (walk {walked:?}) = {:.1} MB/s, compressed to {} bytes",
            total as f64 / secs / 1e6,
            blob.size
        );
    }
}
