//! Unpacking a base image's layers into a root filesystem for the sandbox.
//!
//! The tree is only for running programs (pip) against the base; the image itself reuses the
//! base's blobs untouched. Works as an unprivileged user: owners are ignored, device nodes and
//! fifos are skipped (and counted), directories always stay `u+rwx` and files `u+r` so that later
//! layers apply and the tree can be deleted.
//!
//! Every entry is confined to `dest`: names with `..` are refused; symlinks in parent components
//! are resolved inside `dest` the way securejoin does (absolute targets are relative to `dest`),
//! and an entry whose resolution would climb out of `dest` is refused; the final component is
//! never followed, it is replaced. OCI whiteouts (`.wh.NAME`, `.wh..wh..opq`) remove only what
//! lower layers put there.

use std::collections::{HashSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;
use tar::EntryType;

/// Symlinks followed while resolving one path, as Linux's MAXSYMLINKS.
const MAX_SYMLINKS: u32 = 40;
const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
/// Other `.wh..wh.` names are aufs bookkeeping, not content.
const AUFS_META_PREFIX: &[u8] = b".wh..wh.";

/// What unpacking did, for the caller's log.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UnpackStats {
    /// Entries written (directories, files, symlinks, hard links).
    pub entries: u64,
    /// Whiteouts and opaque markers applied.
    pub whiteouts: u64,
    /// Device nodes and fifos, which an unprivileged user cannot (and the sandbox need not) create.
    pub skipped_special: u64,
    /// Entries of other types (PAX global headers, ...), ignored.
    pub skipped_other: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("failed to create the root filesystem folder {}", path.display())]
    CreateRoot { path: PathBuf, source: io::Error },
    #[error("failed to open layer {index} ({})", path.display())]
    Open {
        index: usize,
        path: PathBuf,
        source: io::Error,
    },
    #[error(
        "layer {index} ({}) is compressed with {compression}, which is not supported yet",
        path.display()
    )]
    UnsupportedCompression {
        index: usize,
        path: PathBuf,
        compression: &'static str,
    },
    #[error("failed to read the tar stream of layer {index}")]
    Read { index: usize, source: io::Error },
    #[error("layer {index}: refusing entry {entry:?}: {reason}")]
    Refused {
        index: usize,
        entry: String,
        reason: String,
    },
    #[error("layer {index}: failed to extract entry {entry:?}")]
    Extract {
        index: usize,
        entry: String,
        source: io::Error,
    },
}

/// Apply compressed layer blobs, in order, onto `dest` (created if missing).
///
/// The compression is detected from the magic bytes: gzip, zstd or plain tar; bzip2 and xz are
/// reported as unsupported.
pub fn unpack_layers(layers: &[PathBuf], dest: &Path) -> Result<UnpackStats, UnpackError> {
    fs::create_dir_all(dest).map_err(|source| UnpackError::CreateRoot {
        path: dest.to_path_buf(),
        source,
    })?;
    let mut stats = UnpackStats::default();
    for (index, path) in layers.iter().enumerate() {
        let open_err = |source| UnpackError::Open {
            index,
            path: path.clone(),
            source,
        };
        let file = File::open(path).map_err(open_err)?;
        let mut reader = BufReader::with_capacity(1 << 17, file);
        match sniff(reader.fill_buf().map_err(open_err)?) {
            // Decompressed on a thread of its own, so inflating (about half of an unpack) runs
            // beside creating the files.
            Compression::Gzip => {
                let tar = Background::spawn(MultiGzDecoder::new(reader));
                apply(tar, dest, index, &mut stats)?;
            }
            Compression::Zstd => {
                let tar = zstd::stream::read::Decoder::with_buffer(reader).map_err(open_err)?;
                apply(Background::spawn(tar), dest, index, &mut stats)?;
            }
            Compression::None => apply(reader, dest, index, &mut stats)?,
            Compression::Unsupported(compression) => {
                return Err(UnpackError::UnsupportedCompression {
                    index,
                    path: path.clone(),
                    compression,
                });
            }
        }
    }
    Ok(stats)
}

/// A reader whose source is read on another thread, 1 MiB at a time, a few chunks ahead. The
/// thread ends at the source's end or error (passed on), or when this reader is dropped.
struct Background {
    chunks: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
    current: Vec<u8>,
    pos: usize,
    done: bool,
}

impl Background {
    fn spawn(mut source: impl Read + Send + 'static) -> Self {
        let (tx, chunks) = std::sync::mpsc::sync_channel(4);
        std::thread::spawn(move || {
            loop {
                // A chunk is 1 MiB unless the source ended (read_to_end retries Interrupted).
                let mut buf = Vec::with_capacity(1 << 20);
                if let Err(e) = (&mut source).take(1 << 20).read_to_end(&mut buf) {
                    let _ = tx.send(Err(e));
                    return;
                }
                let last = buf.len() < 1 << 20;
                if buf.is_empty() || tx.send(Ok(buf)).is_err() || last {
                    return;
                }
            }
        });
        Background {
            chunks,
            current: Vec::new(),
            pos: 0,
            done: false,
        }
    }
}

impl Read for Background {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.current.len() {
            if self.done {
                return Ok(0);
            }
            match self.chunks.recv() {
                Ok(Ok(chunk)) => {
                    self.current = chunk;
                    self.pos = 0;
                }
                Ok(Err(e)) => {
                    self.done = true;
                    return Err(e);
                }
                // The thread ended after the last chunk.
                Err(_) => {
                    self.done = true;
                    return Ok(0);
                }
            }
        }
        let n = out.len().min(self.current.len() - self.pos);
        out[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Apply one uncompressed tar stream onto `dest` (errors name it as layer 0).
pub fn apply_layer(reader: impl Read, dest: &Path) -> Result<UnpackStats, UnpackError> {
    let mut stats = UnpackStats::default();
    apply(reader, dest, 0, &mut stats)?;
    Ok(stats)
}

enum Compression {
    Gzip,
    Zstd,
    None,
    Unsupported(&'static str),
}

fn sniff(magic: &[u8]) -> Compression {
    if magic.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else if magic.starts_with(b"BZh") {
        Compression::Unsupported("bzip2")
    } else if magic.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Compression::Unsupported("xz")
    } else {
        Compression::None
    }
}

fn apply(
    reader: impl Read,
    dest: &Path,
    index: usize,
    stats: &mut UnpackStats,
) -> Result<(), UnpackError> {
    let mut applier = Applier {
        root: dest,
        index,
        keep: HashSet::new(),
        parent_cache: None,
        stats,
    };
    let mut archive = tar::Archive::new(reader);
    let entries = archive
        .entries()
        .map_err(|source| UnpackError::Read { index, source })?;
    for entry in entries {
        let entry = entry.map_err(|source| UnpackError::Read { index, source })?;
        applier.entry(entry)?;
    }
    Ok(())
}

/// Why a path could not be resolved inside the root.
enum ResolveError {
    Escapes,
    TooManyLinks,
    NotADirectory(PathBuf),
    Io(io::Error),
}

struct Applier<'a> {
    root: &'a Path,
    index: usize,
    /// Paths (relative to the root, resolved) this layer wrote, and all their ancestors: what a
    /// whiteout or opaque marker in this layer must not remove.
    keep: HashSet<PathBuf>,
    /// The last parent directory resolved and created: (its components as named, resolved path).
    /// Dropped whenever something is removed or a symlink is made.
    parent_cache: Option<(Vec<OsString>, PathBuf)>,
    stats: &'a mut UnpackStats,
}

impl Applier<'_> {
    fn refused(&self, entry: &str, reason: impl Into<String>) -> UnpackError {
        UnpackError::Refused {
            index: self.index,
            entry: entry.to_string(),
            reason: reason.into(),
        }
    }

    fn extract_err(&self, entry: &str, source: io::Error) -> UnpackError {
        UnpackError::Extract {
            index: self.index,
            entry: entry.to_string(),
            source,
        }
    }

    fn resolve_err(&self, entry: &str, e: ResolveError) -> UnpackError {
        match e {
            ResolveError::Escapes => self.refused(entry, "it resolves outside the root"),
            ResolveError::TooManyLinks => self.refused(entry, "too many levels of symlinks"),
            ResolveError::NotADirectory(p) => self.refused(
                entry,
                format!("its parent {} is not a directory", p.display()),
            ),
            ResolveError::Io(source) => self.extract_err(entry, source),
        }
    }

    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), UnpackError> {
        let raw = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw).into_owned();
        let Some(comps) = components(&raw) else {
            return Err(self.refused(&name, "the name has a `..` component"));
        };
        let Some((last, parent)) = comps.split_last() else {
            // The layer's root ("./"): nothing to do.
            return Ok(());
        };
        let last_bytes = last.as_bytes();

        if last_bytes.starts_with(WHITEOUT_PREFIX) {
            if last_bytes == OPAQUE_MARKER {
                self.opaque(&name, parent)?;
            } else if !last_bytes.starts_with(AUFS_META_PREFIX) {
                let hidden = OsStr::from_bytes(&last_bytes[WHITEOUT_PREFIX.len()..]);
                if hidden.is_empty() || hidden == "." || hidden == ".." {
                    return Err(self.refused(&name, "a whiteout must name an entry"));
                }
                self.whiteout(&name, parent, hidden)?;
            }
            self.stats.whiteouts += 1;
            return Ok(());
        }

        let entry_type = entry.header().entry_type();
        match entry_type {
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                self.stats.skipped_special += 1;
                return Ok(());
            }
            EntryType::Directory
            | EntryType::Regular
            | EntryType::Continuous
            | EntryType::GNUSparse
            | EntryType::Symlink
            | EntryType::Link => {}
            _ => {
                self.stats.skipped_other += 1;
                return Ok(());
            }
        }

        let parent_rel = self.parent_dir(&name, parent)?;
        let rel = parent_rel.join(last);
        let abs = self.root.join(&rel);
        let mode = entry
            .header()
            .mode()
            .map_err(|e| self.extract_err(&name, e))?
            & 0o7777;

        match entry_type {
            EntryType::Directory => {
                let existing_dir = self
                    .clear(&abs, true)
                    .map_err(|e| self.extract_err(&name, e))?;
                if !existing_dir {
                    fs::DirBuilder::new()
                        .mode(0o700)
                        .create(&abs)
                        .map_err(|e| self.extract_err(&name, e))?;
                }
                fs::set_permissions(&abs, fs::Permissions::from_mode(mode | 0o700))
                    .map_err(|e| self.extract_err(&name, e))?;
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| self.refused(&name, "a symlink without a target"))?
                    .into_owned();
                self.clear(&abs, false)
                    .map_err(|e| self.extract_err(&name, e))?;
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &abs)
                    .map_err(|e| self.extract_err(&name, e))?;
                self.parent_cache = None;
            }
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| self.refused(&name, "a hard link without a target"))?
                    .into_owned();
                let target_name = String::from_utf8_lossy(&target).into_owned();
                let Some(tcomps) = components(&target) else {
                    return Err(self.refused(
                        &name,
                        format!("the hard link target {target_name:?} has a `..` component"),
                    ));
                };
                let Some((tlast, tparent)) = tcomps.split_last() else {
                    return Err(self.refused(&name, "a hard link to the root"));
                };
                let tparent_rel =
                    resolve_dir(self.root, tparent).map_err(|e| self.resolve_err(&name, e))?;
                let source_rel = tparent_rel.join(tlast);
                if source_rel == rel {
                    return Ok(());
                }
                let source = self.root.join(&source_rel);
                let md = fs::symlink_metadata(&source).map_err(|e| self.extract_err(&name, e))?;
                if md.is_dir() {
                    return Err(self.refused(
                        &name,
                        format!("the hard link target {target_name:?} is a directory"),
                    ));
                }
                self.clear(&abs, false)
                    .map_err(|e| self.extract_err(&name, e))?;
                // linkat without AT_SYMLINK_FOLLOW: a symlink source is linked, not followed.
                fs::hard_link(&source, &abs).map_err(|e| self.extract_err(&name, e))?;
            }
            _ => {
                // Regular files (and contiguous / sparse ones, which tar reads as regular).
                self.clear(&abs, false)
                    .map_err(|e| self.extract_err(&name, e))?;
                // create_new is O_EXCL: it never follows a symlink at the final component.
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&abs)
                    .map_err(|e| self.extract_err(&name, e))?;
                io::copy(&mut entry, &mut file).map_err(|e| self.extract_err(&name, e))?;
                file.set_permissions(fs::Permissions::from_mode(mode | 0o400))
                    .map_err(|e| self.extract_err(&name, e))?;
            }
        }
        self.stats.entries += 1;
        self.mark_kept(rel);
        Ok(())
    }

    /// Resolve an entry's parent inside the root and create the directories that are missing.
    fn parent_dir(&mut self, entry: &str, parent: &[OsString]) -> Result<PathBuf, UnpackError> {
        if let Some((names, resolved)) = &self.parent_cache
            && names.as_slice() == parent
        {
            return Ok(resolved.clone());
        }
        let rel = resolve_dir(self.root, parent).map_err(|e| self.resolve_err(entry, e))?;
        let mut cur = PathBuf::new();
        for c in rel.components() {
            cur.push(c);
            let abs = self.root.join(&cur);
            match fs::symlink_metadata(&abs) {
                Ok(md) if md.is_dir() => {}
                Ok(_) => {
                    return Err(self.resolve_err(entry, ResolveError::NotADirectory(cur)));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::DirBuilder::new()
                        .mode(0o755)
                        .create(&abs)
                        .map_err(|e| self.extract_err(entry, e))?;
                    // The umask may have taken bits away; keep it u+rwx at least.
                    fs::set_permissions(&abs, fs::Permissions::from_mode(0o755))
                        .map_err(|e| self.extract_err(entry, e))?;
                }
                Err(e) => return Err(self.extract_err(entry, e)),
            }
        }
        self.parent_cache = Some((parent.to_vec(), rel.clone()));
        Ok(rel)
    }

    /// Make room at `abs` for a new entry: remove what is there, except a directory when
    /// `keep_dir` (directories merge). Returns whether a directory was kept.
    fn clear(&mut self, abs: &Path, keep_dir: bool) -> io::Result<bool> {
        match fs::symlink_metadata(abs) {
            Ok(md) if md.is_dir() => {
                if keep_dir {
                    return Ok(true);
                }
                self.parent_cache = None;
                fs::remove_dir_all(abs)?;
            }
            Ok(_) => {
                self.parent_cache = None;
                fs::remove_file(abs)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(false)
    }

    fn mark_kept(&mut self, rel: PathBuf) {
        let mut p = rel;
        while !p.as_os_str().is_empty() && self.keep.insert(p.clone()) {
            p.pop();
        }
    }

    /// `.wh.NAME`: remove NAME as lower layers left it (what this layer wrote there stays).
    fn whiteout(
        &mut self,
        entry: &str,
        parent: &[OsString],
        hidden: &OsStr,
    ) -> Result<(), UnpackError> {
        let parent_rel = match resolve_dir(self.root, parent) {
            Ok(p) => p,
            // Nothing below a non-directory to remove.
            Err(ResolveError::NotADirectory(_)) => return Ok(()),
            Err(e) => return Err(self.resolve_err(entry, e)),
        };
        self.parent_cache = None;
        self.prune_lower(&parent_rel.join(hidden))
            .map_err(|e| self.extract_err(entry, e))
    }

    /// `.wh..wh..opq` in DIR: remove everything in DIR that lower layers put there, whether this
    /// layer's own entries in DIR come before or after the marker.
    fn opaque(&mut self, entry: &str, dir: &[OsString]) -> Result<(), UnpackError> {
        let dir_rel = self.parent_dir(entry, dir)?;
        self.parent_cache = None;
        let abs = self.root.join(&dir_rel);
        let children = fs::read_dir(&abs).map_err(|e| self.extract_err(entry, e))?;
        for child in children {
            let child = child.map_err(|e| self.extract_err(entry, e))?;
            self.prune_lower(&dir_rel.join(child.file_name()))
                .map_err(|e| self.extract_err(entry, e))?;
        }
        self.mark_kept(dir_rel);
        Ok(())
    }

    /// Remove `rel` unless this layer wrote it (or something under it); in a kept directory,
    /// prune its children the same way.
    fn prune_lower(&self, rel: &Path) -> io::Result<()> {
        let abs = self.root.join(rel);
        if !self.keep.contains(rel) {
            return match fs::symlink_metadata(&abs) {
                Ok(md) if md.is_dir() => fs::remove_dir_all(&abs),
                Ok(_) => fs::remove_file(&abs),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e),
            };
        }
        if fs::symlink_metadata(&abs)?.is_dir() {
            for child in fs::read_dir(&abs)? {
                self.prune_lower(&rel.join(child?.file_name()))?;
            }
        }
        Ok(())
    }
}

/// The components of an entry name, without empty and `.` ones (a leading `/` is dropped: names
/// are relative to the root). None when a component is `..`.
fn components(raw: &[u8]) -> Option<Vec<OsString>> {
    let mut out = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return None,
            c => out.push(OsStr::from_bytes(c).to_owned()),
        }
    }
    Some(out)
}

/// Resolve a directory path (components relative to `root`) inside `root`, following symlinks
/// the way securejoin does, except that climbing above the root is an error rather than clamped.
/// Absolute symlink targets are taken relative to the root. The result is relative to the root;
/// each of its components is a real directory or does not exist yet.
fn resolve_dir(root: &Path, comps: &[OsString]) -> Result<PathBuf, ResolveError> {
    let mut queue: VecDeque<OsString> = comps.iter().cloned().collect();
    let mut cur = PathBuf::new();
    let mut links = 0;
    while let Some(c) = queue.pop_front() {
        match c.as_bytes() {
            b"" | b"." => continue,
            b".." => {
                if !cur.pop() {
                    return Err(ResolveError::Escapes);
                }
                continue;
            }
            _ => {}
        }
        let next = cur.join(&c);
        let abs = root.join(&next);
        match fs::symlink_metadata(&abs) {
            Ok(md) if md.file_type().is_symlink() => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(ResolveError::TooManyLinks);
                }
                let target = fs::read_link(&abs).map_err(ResolveError::Io)?;
                let target = target.as_os_str().as_bytes();
                if target.starts_with(b"/") {
                    cur = PathBuf::new();
                }
                for t in target.rsplit(|b| *b == b'/') {
                    if !t.is_empty() {
                        queue.push_front(OsStr::from_bytes(t).to_owned());
                    }
                }
            }
            Ok(md) if md.is_dir() => cur = next,
            Ok(_) => return Err(ResolveError::NotADirectory(next)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => cur = next,
            Err(e) => return Err(ResolveError::Io(e)),
        }
    }
    Ok(cur)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::MetadataExt;

    use tar::Header;

    /// Builds a tar stream in memory, writing names and link names into the header bytes as
    /// given (so that hostile names can be tested; the tar crate's setters refuse them).
    #[derive(Default)]
    struct Tar {
        buf: Vec<u8>,
    }

    impl Tar {
        fn raw(
            &mut self,
            ty: EntryType,
            name: &str,
            mode: u32,
            link: &str,
            data: &[u8],
        ) -> &mut Self {
            let mut h = Header::new_gnu();
            {
                let old = h.as_old_mut();
                old.name[..name.len()].copy_from_slice(name.as_bytes());
                old.linkname[..link.len()].copy_from_slice(link.as_bytes());
            }
            h.set_entry_type(ty);
            h.set_mode(mode);
            h.set_uid(1234);
            h.set_gid(1234);
            h.set_size(data.len() as u64);
            h.set_cksum();
            self.buf.extend_from_slice(h.as_bytes());
            self.buf.extend_from_slice(data);
            let pad = (512 - data.len() % 512) % 512;
            self.buf.extend(std::iter::repeat_n(0u8, pad));
            self
        }
        fn dir(&mut self, name: &str) -> &mut Self {
            self.raw(EntryType::Directory, name, 0o755, "", b"")
        }
        fn dir_mode(&mut self, name: &str, mode: u32) -> &mut Self {
            self.raw(EntryType::Directory, name, mode, "", b"")
        }
        fn file(&mut self, name: &str, data: &str) -> &mut Self {
            self.raw(EntryType::Regular, name, 0o644, "", data.as_bytes())
        }
        fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
            self.raw(EntryType::Symlink, name, 0o777, target, b"")
        }
        fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
            self.raw(EntryType::Link, name, 0o644, target, b"")
        }
        fn bytes(&self) -> Vec<u8> {
            let mut b = self.buf.clone();
            b.extend_from_slice(&[0u8; 1024]);
            b
        }
        fn apply(&self, dest: &Path) -> Result<UnpackStats, UnpackError> {
            apply_layer(&self.bytes()[..], dest)
        }
    }

    /// A root inside a scratch folder, next to a sentinel folder that must never be touched.
    struct Scratch {
        _dir: tempfile::TempDir,
        root: PathBuf,
        outside: PathBuf,
    }

    impl Scratch {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().join("a/b/rootfs");
            let outside = dir.path().join("a/b/outside");
            fs::create_dir_all(&root).unwrap();
            fs::create_dir_all(&outside).unwrap();
            fs::write(outside.join("sentinel"), "untouched").unwrap();
            Scratch {
                _dir: dir,
                root,
                outside,
            }
        }
        fn outside_untouched(&self) {
            let names: Vec<_> = fs::read_dir(&self.outside)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(names, vec![OsString::from("sentinel")]);
            assert_eq!(
                fs::read_to_string(self.outside.join("sentinel")).unwrap(),
                "untouched"
            );
            // Nothing escaped to the scratch folder's other levels either.
            let mut up: Vec<_> = fs::read_dir(self.root.parent().unwrap())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            up.sort();
            assert_eq!(
                up,
                vec![OsString::from("outside"), OsString::from("rootfs")]
            );
        }
        fn p(&self, rel: &str) -> PathBuf {
            self.root.join(rel)
        }
    }

    fn exists(p: &Path) -> bool {
        fs::symlink_metadata(p).is_ok()
    }

    fn refused(r: Result<UnpackStats, UnpackError>, what: &str) {
        match r {
            Err(UnpackError::Refused { entry, .. }) => assert!(entry.contains(what), "{entry}"),
            other => panic!("expected a refusal naming {what}, got {other:?}"),
        }
    }

    #[test]
    fn background_reader_passes_every_byte_and_the_error() {
        let data: Vec<u8> = (0..(3 << 20) + 7).map(|i| (i % 251) as u8).collect();
        let mut got = Vec::new();
        Background::spawn(std::io::Cursor::new(data.clone()))
            .read_to_end(&mut got)
            .unwrap();
        assert_eq!(got, data);
        // A source failing after 1.5 MiB: the whole chunks before it, then its error.
        let failing = std::io::Cursor::new(vec![7u8; 3 << 19]).chain(Failing);
        let mut r = Background::spawn(failing);
        let mut got = Vec::new();
        let err = r.read_to_end(&mut got).unwrap_err();
        assert_eq!(err.to_string(), "cut");
        assert_eq!(got.len(), 1 << 20);
    }

    struct Failing;
    impl Read for Failing {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::other("cut"))
        }
    }

    #[test]
    fn whiteout_removes_a_lower_file_and_dir() {
        let s = Scratch::new();
        Tar::default()
            .dir("a/")
            .file("a/file", "x")
            .dir("a/dir/")
            .file("a/dir/x", "x")
            .file("a/other", "stays")
            .apply(&s.root)
            .unwrap();
        let stats = Tar::default()
            .file("a/.wh.file", "")
            .file("a/.wh.dir", "")
            .file("a/.wh.never_existed", "")
            .file("nowhere/.wh.x", "")
            .apply(&s.root)
            .unwrap();
        assert_eq!(stats.whiteouts, 4);
        assert!(!exists(&s.p("a/file")));
        assert!(!exists(&s.p("a/dir")));
        assert!(!exists(&s.p("a/.wh.file")));
        assert!(!exists(&s.p("nowhere")));
        assert_eq!(fs::read_to_string(s.p("a/other")).unwrap(), "stays");
    }

    #[test]
    fn whiteout_keeps_what_the_same_layer_wrote() {
        let s = Scratch::new();
        Tar::default().file("f", "lower").apply(&s.root).unwrap();
        Tar::default()
            .file("f", "upper")
            .file(".wh.f", "")
            .apply(&s.root)
            .unwrap();
        assert_eq!(fs::read_to_string(s.p("f")).unwrap(), "upper");
    }

    #[test]
    fn opaque_dir_removes_lower_children_and_keeps_this_layers_in_any_order() {
        for marker_first in [false, true] {
            let s = Scratch::new();
            Tar::default()
                .dir("d/")
                .file("d/old", "lower")
                .dir("d/sub/")
                .file("d/sub/old2", "lower")
                .file("d/replaced", "lower")
                .file("e/x", "sibling")
                .apply(&s.root)
                .unwrap();
            let mut upper = Tar::default();
            if marker_first {
                upper.file("d/.wh..wh..opq", "");
            }
            upper
                .dir("d/")
                .file("d/new1", "upper")
                .file("d/sub/new3", "upper")
                .file("d/replaced", "upper");
            if !marker_first {
                upper.file("d/.wh..wh..opq", "");
            }
            upper.file("d/new2", "upper");
            upper.apply(&s.root).unwrap();

            let ctx = format!("marker first: {marker_first}");
            assert!(!exists(&s.p("d/old")), "{ctx}");
            assert!(!exists(&s.p("d/sub/old2")), "{ctx}");
            assert!(!exists(&s.p("d/.wh..wh..opq")), "{ctx}");
            for f in ["d/new1", "d/new2", "d/sub/new3", "d/replaced"] {
                assert_eq!(fs::read_to_string(s.p(f)).unwrap(), "upper", "{f} {ctx}");
            }
            assert_eq!(fs::read_to_string(s.p("e/x")).unwrap(), "sibling", "{ctx}");
        }
    }

    #[test]
    fn dotdot_names_are_refused() {
        let s = Scratch::new();
        refused(
            Tar::default().file("../outside/escape", "x").apply(&s.root),
            "../outside/escape",
        );
        refused(
            Tar::default().file("ok/../../escape", "x").apply(&s.root),
            "ok/../../escape",
        );
        s.outside_untouched();
    }

    #[test]
    fn symlink_parents_resolve_inside_the_root_or_are_refused() {
        let s = Scratch::new();
        // `evil -> /` means the root itself: evil/etc/x lands at <root>/etc/x.
        Tar::default()
            .symlink("evil", "/")
            .file("evil/etc/x", "inside")
            .apply(&s.root)
            .unwrap();
        assert_eq!(fs::read_to_string(s.p("etc/x")).unwrap(), "inside");
        assert!(fs::symlink_metadata(s.p("evil")).unwrap().is_symlink());

        // Climbing out through a relative symlink is refused.
        let r = Tar::default()
            .symlink("up", "../../..")
            .file("up/outside/x", "escaped")
            .apply(&s.root);
        let err = r.unwrap_err();
        assert!(
            matches!(&err, UnpackError::Refused { index: 0, entry, .. } if entry == "up/outside/x"),
            "{err}"
        );
        // Also through a symlink to the real path of the outside folder, and a chain.
        let r = Tar::default()
            .symlink("abs", s.outside.to_str().unwrap())
            .file("abs/x", "resolved inside")
            .apply(&s.root);
        r.unwrap();
        let inside = format!("{}/x", s.outside.display());
        assert!(exists(&s.p(inside.trim_start_matches('/'))));
        let r = Tar::default()
            .dir("d/")
            .symlink("d/l1", "../l2")
            .symlink("l2", "d/../..")
            .file("d/l1/outside/x", "escaped")
            .apply(&s.root);
        refused(r, "d/l1/outside/x");
        // A hard link through the symlink is resolved the same way.
        let r = Tar::default()
            .hardlink("h", "up/outside/sentinel")
            .apply(&s.root);
        refused(r, "h");
        s.outside_untouched();
    }

    #[test]
    fn hardlinks_outside_are_refused_and_inside_share_the_inode() {
        let s = Scratch::new();
        refused(
            Tar::default()
                .hardlink("h", "../outside/sentinel")
                .apply(&s.root),
            "h",
        );
        Tar::default()
            .file("a", "content")
            .hardlink("b", "a")
            .hardlink("/c", "/a")
            .apply(&s.root)
            .unwrap();
        let a = fs::metadata(s.p("a")).unwrap();
        assert_eq!(a.ino(), fs::metadata(s.p("b")).unwrap().ino());
        assert_eq!(a.ino(), fs::metadata(s.p("c")).unwrap().ino());
        // A hard link to a lower layer's file works too.
        Tar::default().hardlink("d", "a").apply(&s.root).unwrap();
        assert_eq!(a.ino(), fs::metadata(s.p("d")).unwrap().ino());
        s.outside_untouched();
    }

    #[test]
    fn replacing_a_symlink_or_hardlink_does_not_write_through_it() {
        let s = Scratch::new();
        let sentinel = s.outside.join("sentinel");
        Tar::default()
            .symlink("link", sentinel.to_str().unwrap())
            .symlink("rel", "../outside/sentinel")
            .file("shared", "lower")
            .hardlink("other", "shared")
            .apply(&s.root)
            .unwrap();
        Tar::default()
            .file("link", "upper")
            .file("rel", "upper")
            .file("shared", "upper")
            .apply(&s.root)
            .unwrap();
        for f in ["link", "rel", "shared"] {
            let md = fs::symlink_metadata(s.p(f)).unwrap();
            assert!(md.is_file(), "{f}");
            assert_eq!(fs::read_to_string(s.p(f)).unwrap(), "upper");
        }
        assert_eq!(fs::read_to_string(s.p("other")).unwrap(), "lower");
        s.outside_untouched();
    }

    #[test]
    fn types_replace_each_other_and_directories_merge() {
        let s = Scratch::new();
        Tar::default()
            .dir("d/")
            .file("d/lower", "x")
            .dir("x/")
            .file("x/y", "x")
            .file("f", "x")
            .apply(&s.root)
            .unwrap();
        Tar::default()
            .dir_mode("d/", 0o750)
            .file("d/upper", "y")
            .symlink("x", "d")
            .dir("f/")
            .apply(&s.root)
            .unwrap();
        assert!(exists(&s.p("d/lower")) && exists(&s.p("d/upper")));
        assert_eq!(fs::metadata(s.p("d")).unwrap().mode() & 0o777, 0o750);
        assert_eq!(fs::read_link(s.p("x")).unwrap(), Path::new("d"));
        assert!(fs::symlink_metadata(s.p("f")).unwrap().is_dir());
    }

    #[test]
    fn devices_and_fifos_are_skipped_and_counted() {
        let s = Scratch::new();
        let stats = Tar::default()
            .dir("dev/")
            .raw(EntryType::Char, "dev/null", 0o666, "", b"")
            .raw(EntryType::Block, "dev/sda", 0o660, "", b"")
            .raw(EntryType::Fifo, "dev/fifo", 0o644, "", b"")
            .file("dev/after", "ok")
            .apply(&s.root)
            .unwrap();
        assert_eq!(stats.skipped_special, 3);
        assert_eq!(stats.entries, 2);
        for n in ["null", "sda", "fifo"] {
            assert!(!exists(&s.p(&format!("dev/{n}"))));
        }
        assert!(exists(&s.p("dev/after")));
    }

    #[test]
    fn read_only_dirs_still_take_later_children_and_can_be_deleted() {
        let s = Scratch::new();
        Tar::default()
            .dir_mode("ro/", 0o555)
            .file("ro/a", "a")
            .raw(EntryType::Regular, "ro/unreadable", 0o000, "", b"z")
            .apply(&s.root)
            .unwrap();
        Tar::default().file("ro/b", "b").apply(&s.root).unwrap();
        assert!(exists(&s.p("ro/a")) && exists(&s.p("ro/b")));
        let mode = fs::metadata(s.p("ro")).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o755, "group/other bits kept, u+rwx added");
        assert_eq!(fs::read_to_string(s.p("ro/unreadable")).unwrap(), "z");
        fs::remove_dir_all(&s.root).unwrap();
    }

    #[test]
    fn layers_are_detected_by_magic_and_applied_in_order() {
        let s = Scratch::new();
        let dir = tempfile::tempdir().unwrap();
        let lower = dir.path().join("lower");
        let upper = dir.path().join("upper");
        let mut gz =
            flate2::write::GzEncoder::new(File::create(&lower).unwrap(), Default::default());
        gz.write_all(&Tar::default().file("a", "1").file("b", "1").bytes())
            .unwrap();
        gz.finish().unwrap();
        fs::write(
            &upper,
            Tar::default().file("a", "2").file(".wh.b", "").bytes(),
        )
        .unwrap();
        let stats = unpack_layers(&[lower, upper.clone()], &s.root).unwrap();
        assert_eq!(stats.entries, 3);
        assert_eq!(fs::read_to_string(s.p("a")).unwrap(), "2");
        assert!(!exists(&s.p("b")));

        // zstd (as `--compression zstd` writes it) is read; xz is named as unsupported.
        let zstd = dir.path().join("zstd");
        fs::write(
            &zstd,
            zstd::stream::encode_all(&Tar::default().file("c", "3").bytes()[..], 3).unwrap(),
        )
        .unwrap();
        unpack_layers(&[zstd], &s.root).unwrap();
        assert_eq!(fs::read_to_string(s.p("c")).unwrap(), "3");
        let xz = dir.path().join("xz");
        fs::write(&xz, [0xfd, b'7', b'z', b'X', b'Z', 0, 0]).unwrap();
        let err = unpack_layers(&[upper, xz], &s.root).unwrap_err();
        assert!(
            matches!(
                err,
                UnpackError::UnsupportedCompression {
                    index: 1,
                    compression: "xz",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn a_layer_written_by_write_layer_unpacks_to_the_same_tree() {
        use crate::layer::{LayerOptions, entries_from_tree, write_layer};
        let dir = tempfile::tempdir().unwrap();
        let cache = crate::cache::Cache::open(dir.path().join("cache")).unwrap();
        let tree = dir.path().join("tree");
        fs::create_dir_all(tree.join("pkg/sub")).unwrap();
        fs::write(tree.join("pkg/sub/m.py"), "x = 1\n").unwrap();
        fs::write(tree.join("pkg/".to_string() + &"n".repeat(120)), "long").unwrap();
        fs::hard_link(tree.join("pkg/sub/m.py"), tree.join("pkg/hl.py")).unwrap();
        std::os::unix::fs::symlink("sub/m.py", tree.join("pkg/link")).unwrap();
        let blob = write_layer(
            entries_from_tree(&tree, "usr/lib").unwrap(),
            &LayerOptions::default(),
            &cache,
        )
        .unwrap();
        let root = dir.path().join("root");
        unpack_layers(&[cache.blob_path(&blob.digest)], &root).unwrap();
        let p = root.join("usr/lib/pkg");
        assert_eq!(fs::read_to_string(p.join("sub/m.py")).unwrap(), "x = 1\n");
        assert_eq!(fs::read_to_string(p.join("n".repeat(120))).unwrap(), "long");
        assert_eq!(
            fs::metadata(p.join("hl.py")).unwrap().ino(),
            fs::metadata(p.join("sub/m.py")).unwrap().ino()
        );
        assert_eq!(
            fs::read_link(p.join("link")).unwrap(),
            Path::new("sub/m.py")
        );
    }
}
