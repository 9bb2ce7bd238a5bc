//! Scratch trees: the base's unpacked root filesystem and pip's staging roots. They live for one
//! build and hold thousands of small files, so where they go decides much of a cold build's time:
//! creating a file on a virtual machine's ext4 costs a syscall-heavy ~0.5 ms here (unpacking
//! python:3.9-slim: 4 s on disk, 0.7 s in memory; pip installing numpy + scipy + scikit-learn:
//! 3.6 s against 1.3 s). So a scratch tree goes in memory (/dev/shm, a tmpfs) when it fits —
//! at most half the tmpfs's free space and a quarter of the machine's available memory — and in
//! the cache's tmp/ folder otherwise, or always with `--scratch disk`.
//!
//! A tree in memory is outside the cache, so it is guarded: its folder is flock'ed while the build
//! uses it and removed when the build ends (or fails); a build that was killed leaves its folder
//! unlocked, and the next build that makes a scratch tree in memory removes it.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::cache::Cache;

/// Where scratch trees may go (`--scratch`, VXBUILD_SCRATCH).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ScratchPolicy {
    /// In memory when the tree fits, else on disk in the cache.
    #[default]
    Auto,
    /// Always on disk, in the cache's tmp/ folder.
    Disk,
}

/// The memory-backed folder scratch trees go to.
pub const MEMORY_ROOT: &str = "/dev/shm";
/// Prefix of every scratch folder in [`MEMORY_ROOT`]: what the sweep looks at.
const PREFIX: &str = "vxbuild-scratch-";
/// An unlocked folder younger than this may be one being set up by another build: left alone.
const SWEEP_MIN_AGE: Duration = Duration::from_secs(60);

/// A scratch tree, removed when dropped.
#[derive(Debug)]
pub struct Scratch {
    dir: tempfile::TempDir,
    /// Holds the flock that tells sweeps the folder is in use (memory trees only).
    lock: Option<File>,
}

impl Scratch {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Keep the tree (a disk tree being renamed into the cache): the caller owns it now.
    pub fn keep(self) -> PathBuf {
        self.dir.keep()
    }

    /// Whether the tree is in memory (for the -v log and the tests).
    pub fn in_memory(&self) -> bool {
        self.lock.is_some()
    }
}

/// What the memory root offers, as measured now.
#[derive(Debug, Clone, Copy)]
pub struct MemoryRoom {
    /// Free bytes in the tmpfs.
    pub tmpfs_free: u64,
    /// MemAvailable from /proc/meminfo.
    pub mem_available: u64,
    /// Whether programs may be run from it (no noexec mount flag).
    pub exec: bool,
}

/// Whether a tree of `need` bytes goes in memory.
pub fn fits(room: &MemoryRoom, need: u64, needs_exec: bool) -> bool {
    (room.exec || !needs_exec) && need <= room.tmpfs_free / 2 && need <= room.mem_available / 4
}

/// A new scratch tree for about `need` bytes. `needs_exec`: programs will run from it (a rootfs).
pub fn create(
    cache: &Cache,
    prefix: &str,
    need: u64,
    needs_exec: bool,
    policy: ScratchPolicy,
) -> io::Result<Scratch> {
    if policy == ScratchPolicy::Auto
        && let Some(room) = memory_room(Path::new(MEMORY_ROOT))
        && fits(&room, need, needs_exec)
        && let Ok(s) = create_in_memory(Path::new(MEMORY_ROOT), prefix)
    {
        return Ok(s);
    }
    Ok(Scratch {
        dir: cache.tempdir(prefix)?,
        lock: None,
    })
}

/// Every memory folder this process made, for [`remove_made`].
static MADE: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

/// Remove whatever is left of the memory folders this process made. For an interrupted build:
/// dropping it removes its scratch folders, but a blocking task (an unpack, say) may still have
/// been writing into one; call this once the runtime has stopped.
pub fn remove_made() {
    let made = std::mem::take(&mut *MADE.lock().unwrap_or_else(|e| e.into_inner()));
    for p in made {
        let _ = std::fs::remove_dir_all(p);
    }
}

fn create_in_memory(root: &Path, prefix: &str) -> io::Result<Scratch> {
    sweep(root);
    let dir = tempfile::Builder::new()
        .prefix(&format!("{PREFIX}{prefix}"))
        .tempdir_in(root)?;
    MADE.lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(dir.path().to_path_buf());
    let lock = File::open(dir.path())?;
    flock(&lock, libc::LOCK_SH | libc::LOCK_NB)?;
    Ok(Scratch {
        dir,
        lock: Some(lock),
    })
}

/// The memory root's room, or `None` when it is missing, not a tmpfs or not writable.
fn memory_room(root: &Path) -> Option<MemoryRoom> {
    let c = std::ffi::CString::new(root.as_os_str().as_encoded_bytes()).ok()?;
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a NUL-terminated path and fs a properly sized out-parameter.
    if unsafe { libc::statfs(c.as_ptr(), &mut fs) } != 0 {
        return None;
    }
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    if fs.f_type as i64 != TMPFS_MAGIC {
        return None;
    }
    // SAFETY: as above.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } != 0 {
        return None;
    }
    let mut vfs: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statvfs(c.as_ptr(), &mut vfs) } != 0 {
        return None;
    }
    Some(MemoryRoom {
        tmpfs_free: vfs.f_bavail as u64 * vfs.f_frsize as u64,
        mem_available: mem_available()?,
        exec: vfs.f_flag & libc::ST_NOEXEC == 0,
    })
}

fn mem_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn flock(f: &File, op: libc::c_int) -> io::Result<()> {
    // SAFETY: the fd is open for the duration of the call.
    if unsafe { libc::flock(f.as_raw_fd(), op) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Remove this user's scratch folders in `root` that no live build holds (their build was
/// killed). Best effort: a folder that cannot be locked or removed is left.
pub fn sweep(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    for e in entries.flatten() {
        if !e.file_name().to_string_lossy().starts_with(PREFIX) {
            continue;
        }
        let path: PathBuf = e.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let old = meta
            .modified()
            .ok()
            .and_then(|m| SystemTime::now().duration_since(m).ok())
            .is_some_and(|age| age >= SWEEP_MIN_AGE);
        if !meta.is_dir() || meta.uid() != uid || !old {
            continue;
        }
        let Ok(f) = File::open(&path) else { continue };
        if flock(&f, libc::LOCK_EX | libc::LOCK_NB).is_ok() {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(free: u64, avail: u64, exec: bool) -> MemoryRoom {
        MemoryRoom {
            tmpfs_free: free,
            mem_available: avail,
            exec,
        }
    }

    #[test]
    fn a_tree_goes_in_memory_only_when_it_fits_both_bounds() {
        const G: u64 = 1 << 30;
        assert!(fits(&room(12 * G, 20 * G, true), 300 << 20, true));
        // Half the tmpfs's free space at most (a docker container's 64 MB /dev/shm).
        assert!(!fits(&room(64 << 20, 20 * G, true), 40 << 20, false));
        assert!(fits(&room(64 << 20, 20 * G, true), 30 << 20, false));
        // A quarter of the available memory at most.
        assert!(!fits(&room(12 * G, G, true), 300 << 20, false));
        // A noexec tmpfs takes staging roots, not a rootfs.
        assert!(!fits(&room(12 * G, 20 * G, false), 1 << 20, true));
        assert!(fits(&room(12 * G, 20 * G, false), 1 << 20, false));
    }

    #[test]
    fn a_memory_scratch_is_locked_while_held_and_removed_when_dropped() {
        let root = tempfile::tempdir().unwrap();
        let s = create_in_memory(root.path(), "t-").unwrap();
        assert!(s.in_memory());
        let p = s.path().to_path_buf();
        std::fs::write(p.join("f"), "x").unwrap();
        let other = File::open(&p).unwrap();
        assert!(flock(&other, libc::LOCK_EX | libc::LOCK_NB).is_err());
        drop(s);
        assert!(!p.exists());
    }

    #[test]
    fn sweep_removes_old_unlocked_folders_and_keeps_held_or_young_ones() {
        let root = tempfile::tempdir().unwrap();
        let old = SystemTime::now() - Duration::from_secs(3600);
        let age = |p: &Path| {
            File::open(p).unwrap().set_modified(old).unwrap();
        };
        // A live build's folder: old, locked.
        let live = create_in_memory(root.path(), "live-").unwrap();
        age(live.path());
        // A killed build's folder: old, unlocked.
        let dead = root.path().join(format!("{PREFIX}install-dead"));
        std::fs::create_dir_all(dead.join("staging/pkg")).unwrap();
        std::fs::write(dead.join("staging/pkg/f"), "x").unwrap();
        age(&dead);
        // A folder another build has just made and not yet locked.
        let young = root.path().join(format!("{PREFIX}young"));
        std::fs::create_dir(&young).unwrap();
        // Not ours by name.
        let foreign = root.path().join("other-dir");
        std::fs::create_dir(&foreign).unwrap();
        age(&foreign);

        sweep(root.path());
        assert!(!dead.exists());
        assert!(live.path().is_dir());
        assert!(young.is_dir());
        assert!(foreign.is_dir());
    }
}
