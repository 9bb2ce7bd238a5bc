//! The content-addressed, versioned cache shared by every stage.
//!
//! Layout under the root (each bucket carries a format version; bump it when its format changes):
//! ```text
//! blobs-v1/sha256/<hex>         OCI blobs (layers, configs, manifests) by digest
//! rootfs-v1/<manifest hex>/     unpacked base root filesystems, complete when `.complete` exists
//!                               (only those too big for memory: see `scratch`)
//! rootfs-facts-v1/<key>.json    what a build needs of a base's rootfs without unpacking it
//! wheels-v1/<sha256>/<file>     wheels by their sha256, under their own file name
//! pip-v1/<sha256>/<file>        bootstrap pip wheels
//! layers-v1/<key hex>.json      layer index: the blob a layer's inputs gave (see `deps`)
//! probe-v1/<manifest hex>.json  what a base's python said about itself
//! pycache-v1/<manifest hex>/    pip's bytecode for that base (PYTHONPYCACHEPREFIX in the sandbox)
//! pushed-v1/<key hex>.json      blobs known to be in a registry's repositories, and upload
//!                               sessions a build left open in a repository for the next one
//! hosts-v1/<key hex>.json       HTTP or HTTPS, for loopback and insecure registries
//! tmp/                          scratch space for atomic writes (same filesystem as the buckets)
//! ```
//! Every write goes to a temp file under `tmp/` and is renamed into place; entries are verified by
//! digest before they are trusted.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::digest::{Digest, HashingReader, HashingWriter};

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("failed to create the cache folder {}", path.display())]
    Create { path: PathBuf, source: io::Error },
    #[error("failed to write {} into the cache", what)]
    Write { what: String, source: io::Error },
    #[error("content does not match its digest: expected {expected}, got {actual} ({what})")]
    DigestMismatch {
        what: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("size mismatch for {what}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        what: String,
        expected: u64,
        actual: u64,
    },
}

#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

impl Cache {
    /// Open (creating if needed) a cache rooted at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, CacheError> {
        let root = root.into();
        for sub in [
            "blobs-v1/sha256",
            "rootfs-v1",
            "rootfs-facts-v1",
            "wheels-v1",
            "pip-v1",
            "layers-v1",
            "probe-v1",
            "pycache-v1",
            "pushed-v1",
            "hosts-v1",
            "tmp",
        ] {
            let p = root.join(sub);
            fs::create_dir_all(&p).map_err(|source| CacheError::Create {
                path: p.clone(),
                source,
            })?;
        }
        Ok(Cache { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// A fresh temporary directory inside the cache (removed on drop).
    pub fn tempdir(&self, prefix: &str) -> io::Result<tempfile::TempDir> {
        tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(self.tmp_dir())
    }

    /// A fresh temporary file inside the cache, for writing then [`Cache::commit_blob`].
    pub fn tempfile(&self) -> io::Result<tempfile::NamedTempFile> {
        tempfile::Builder::new()
            .prefix("blob-")
            .tempfile_in(self.tmp_dir())
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs-v1/sha256").join(digest.hex())
    }

    /// Whether the blob is present (its size is checked when given; content is verified on read).
    pub fn has_blob(&self, digest: &Digest, size: Option<u64>) -> bool {
        match fs::metadata(self.blob_path(digest)) {
            Ok(m) => m.is_file() && size.is_none_or(|s| s == m.len()),
            Err(_) => false,
        }
    }

    pub fn read_blob(&self, digest: &Digest) -> io::Result<Vec<u8>> {
        let bytes = fs::read(self.blob_path(digest))?;
        if Digest::of(&bytes) != *digest {
            // A corrupt entry is removed, never trusted.
            let _ = fs::remove_file(self.blob_path(digest));
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("cached blob {digest} is corrupt"),
            ));
        }
        Ok(bytes)
    }

    /// Store bytes under their digest.
    pub fn put_blob_bytes(&self, bytes: &[u8]) -> Result<Digest, CacheError> {
        let digest = Digest::of(bytes);
        if self.has_blob(&digest, Some(bytes.len() as u64)) {
            return Ok(digest);
        }
        self.write_atomic(bytes, &self.blob_path(&digest), &digest.to_string())?;
        Ok(digest)
    }

    /// Write `bytes` to a temp file in the cache, then rename it to `dest`.
    fn write_atomic(&self, bytes: &[u8], dest: &Path, what: &str) -> Result<(), CacheError> {
        let err = |source| CacheError::Write {
            what: what.into(),
            source,
        };
        let mut tmp = self.tempfile().map_err(err)?;
        tmp.write_all(bytes).map_err(err)?;
        self.persist(tmp, dest, what)
    }

    /// Stream a reader into the cache, verifying it against `expected` (digest and size) when given.
    pub fn put_blob_reader(
        &self,
        reader: impl Read,
        expected: Option<(&Digest, u64)>,
    ) -> Result<(Digest, u64), CacheError> {
        let what = expected
            .map(|(d, _)| d.to_string())
            .unwrap_or_else(|| "blob".into());
        let tmp = self.tempfile().map_err(|source| CacheError::Write {
            what: what.clone(),
            source,
        })?;
        let mut w = HashingWriter::new(io::BufWriter::new(tmp));
        let mut r = HashingReader::new(reader);
        io::copy(&mut r, &mut w).map_err(|source| CacheError::Write {
            what: what.clone(),
            source,
        })?;
        let (buf, digest, size) = w.finish();
        let tmp = buf.into_inner().map_err(|e| CacheError::Write {
            what: what.clone(),
            source: e.into_error(),
        })?;
        self.commit_blob(tmp, &digest, size, expected)?;
        Ok((digest, size))
    }

    /// Move a finished temp file to its digest's place after checking it against `expected`.
    pub fn commit_blob(
        &self,
        tmp: tempfile::NamedTempFile,
        actual: &Digest,
        actual_size: u64,
        expected: Option<(&Digest, u64)>,
    ) -> Result<PathBuf, CacheError> {
        if let Some((d, s)) = expected {
            if d != actual {
                return Err(CacheError::DigestMismatch {
                    what: "blob".into(),
                    expected: d.clone(),
                    actual: actual.clone(),
                });
            }
            if s != actual_size {
                return Err(CacheError::SizeMismatch {
                    what: d.to_string(),
                    expected: s,
                    actual: actual_size,
                });
            }
        }
        let dest = self.blob_path(actual);
        self.persist(tmp, &dest, actual.as_str())?;
        Ok(dest)
    }

    fn persist(
        &self,
        tmp: tempfile::NamedTempFile,
        dest: &Path,
        what: &str,
    ) -> Result<(), CacheError> {
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(|source| CacheError::Write {
                what: what.into(),
                source,
            })?;
        }
        tmp.persist(dest).map_err(|e| CacheError::Write {
            what: what.into(),
            source: e.error,
        })?;
        Ok(())
    }

    /// The sandbox's Python bytecode cache for one base ([`crate::sandbox::Sandbox::with_bytecode_cache`]).
    pub fn pycache_dir(&self, manifest: &Digest) -> PathBuf {
        self.root.join("pycache-v1").join(manifest.hex())
    }

    /// Where an unpacked base rootfs lives, keyed by the platform manifest's digest.
    pub fn rootfs_dir(&self, manifest: &Digest) -> PathBuf {
        self.root.join("rootfs-v1").join(manifest.hex())
    }

    /// Where a wheel with this sha256 and file name lives.
    pub fn wheel_path(&self, sha256: &Digest, filename: &str) -> PathBuf {
        self.root
            .join("wheels-v1")
            .join(sha256.hex())
            .join(filename)
    }

    pub fn pip_wheel_path(&self, sha256: &Digest, filename: &str) -> PathBuf {
        self.root.join("pip-v1").join(sha256.hex()).join(filename)
    }

    /// A small JSON record of `bucket` (`layers-v1`, `probe-v1`, `pushed-v1`) under `key`; `None`
    /// when absent or unreadable (a record is only ever a shortcut, never the truth).
    pub fn get_record<T: serde::de::DeserializeOwned>(
        &self,
        bucket: &str,
        key: &Digest,
    ) -> Option<T> {
        let bytes = fs::read(self.record_path(bucket, key)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Write a record atomically. Failing to write one only costs a later build some work, so the
    /// error is returned for the caller to log, never to stop a build.
    pub fn put_record<T: serde::Serialize>(
        &self,
        bucket: &str,
        key: &Digest,
        value: &T,
    ) -> Result<(), CacheError> {
        let path = self.record_path(bucket, key);
        let what = path.display().to_string();
        let bytes = serde_json::to_vec(value).map_err(|e| CacheError::Write {
            what: what.clone(),
            source: io::Error::other(e),
        })?;
        self.write_atomic(&bytes, &path, &what)
    }

    /// Read a record and remove it, so that of builds sharing this cache only one gets it: the
    /// record is first renamed to a name of this call's own (a rename succeeds once).
    pub fn take_record<T: serde::de::DeserializeOwned>(
        &self,
        bucket: &str,
        key: &Digest,
    ) -> Option<T> {
        let claimed = tempfile::Builder::new()
            .prefix("taken-")
            .make_in(self.tmp_dir(), |p| {
                fs::rename(self.record_path(bucket, key), p)
            })
            .ok()?;
        let bytes = fs::read(claimed.path()).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    fn record_path(&self, bucket: &str, key: &Digest) -> PathBuf {
        self.root.join(bucket).join(format!("{}.json", key.hex()))
    }

    /// Atomically place a finished temp file at `dest` (a path inside this cache).
    pub fn persist_file(
        &self,
        tmp: tempfile::NamedTempFile,
        dest: &Path,
    ) -> Result<(), CacheError> {
        self.persist(tmp, dest, &dest.display().to_string())
    }
}

/// The default cache folder: $XDG_CACHE_HOME/vxbuild or ~/.cache/vxbuild.
pub fn default_cache_dir() -> Option<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(x).join("vxbuild"));
    }
    std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .map(|h| PathBuf::from(h).join(".cache/vxbuild"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_and_verify() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let d = cache.put_blob_bytes(b"abc").unwrap();
        assert!(cache.has_blob(&d, Some(3)));
        assert!(!cache.has_blob(&d, Some(4)));
        assert_eq!(cache.read_blob(&d).unwrap(), b"abc");
        let wrong = Digest::of(b"abd");
        let err = cache
            .put_blob_reader(&b"abc"[..], Some((&wrong, 3)))
            .unwrap_err();
        assert!(matches!(err, CacheError::DigestMismatch { .. }));
        assert!(!cache.has_blob(&wrong, None));
        // A corrupted entry is detected and dropped.
        fs::write(cache.blob_path(&d), b"xyz").unwrap();
        assert!(cache.read_blob(&d).is_err());
        assert!(!cache.has_blob(&d, None));
    }

    #[test]
    fn a_taken_record_is_gone_and_only_one_taker_gets_it() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let key = Digest::of(b"k");
        assert_eq!(cache.take_record::<Vec<u32>>("pushed-v1", &key), None);
        cache.put_record("pushed-v1", &key, &vec![1u32, 2]).unwrap();
        // Eight threads race for one record: exactly one has it, and nothing is left behind.
        let got: Vec<Option<Vec<u32>>> = std::thread::scope(|s| {
            let takers: Vec<_> = (0..8)
                .map(|_| s.spawn(|| cache.take_record::<Vec<u32>>("pushed-v1", &key)))
                .collect();
            takers.into_iter().map(|t| t.join().unwrap()).collect()
        });
        assert_eq!(got.iter().flatten().collect::<Vec<_>>(), [&vec![1, 2]]);
        assert_eq!(cache.get_record::<Vec<u32>>("pushed-v1", &key), None);
        assert_eq!(fs::read_dir(cache.tmp_dir()).unwrap().count(), 0);
    }
}
