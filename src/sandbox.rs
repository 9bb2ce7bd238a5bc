//! Run a program inside the base image's root filesystem, confined with bubblewrap.
//!
//! The rootfs is mounted read-only at `/`; the only writable places are the binds the caller asks
//! for and a private `/tmp`. The environment is cleared; only what the caller passes is set. The host's
//! home, the project folder and any credential are invisible unless explicitly bound. Network is
//! off unless asked for. Works as root and as an unprivileged user (through a user namespace).

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};

/// Folders the sandbox needs as mount points inside the rootfs; created once when a rootfs is unpacked.
pub const MOUNT_POINTS: &[&str] = &["proc", "dev", "tmp", "vx"];
/// Files the sandbox binds over when the network is on.
pub const FILE_MOUNT_POINTS: &[&str] = &["etc/resolv.conf", "etc/hosts"];

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(
        "bubblewrap (bwrap) was not found on PATH; vxbuild runs pip inside it — install it (Debian/Ubuntu: apt-get install bubblewrap)"
    )]
    BwrapMissing,
    #[error(
        "cannot create the build sandbox: {detail}\nvxbuild needs Linux user namespaces to run pip confined as an unprivileged user. Enable them (sysctl kernel.unprivileged_userns_clone=1, user.max_user_namespaces > 0, or on Ubuntu 24.04+ kernel.apparmor_restrict_unprivileged_userns=0), or run as root."
    )]
    NamespacesUnavailable { detail: String },
    #[error("failed to start the sandbox for `{program}`")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("failed to prepare the sandbox root {}", path.display())]
    Prepare {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One bind mount: a host path made visible at `dest` inside the sandbox.
#[derive(Debug, Clone)]
pub struct Bind {
    pub host: PathBuf,
    pub dest: String,
    pub writable: bool,
}

/// What to run and what it may see.
#[derive(Debug, Clone, Default)]
pub struct SandboxCommand {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub binds: Vec<Bind>,
    pub network: bool,
    pub cwd: Option<String>,
    /// A Python program that may keep its bytecode in the sandbox's bytecode cache
    /// ([`Sandbox::with_bytecode_cache`]; Python 3.8+).
    pub python_bytecode: bool,
}

impl SandboxCommand {
    pub fn new<S: Into<String>>(argv: impl IntoIterator<Item = S>) -> Self {
        SandboxCommand {
            argv: argv.into_iter().map(Into::into).collect(),
            ..Default::default()
        }
    }
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }
    pub fn ro(mut self, host: &Path, dest: &str) -> Self {
        self.binds.push(Bind {
            host: host.into(),
            dest: dest.into(),
            writable: false,
        });
        self
    }
    pub fn rw(mut self, host: &Path, dest: &str) -> Self {
        self.binds.push(Bind {
            host: host.into(),
            dest: dest.into(),
            writable: true,
        });
        self
    }
    pub fn network(mut self, on: bool) -> Self {
        self.network = on;
        self
    }
}

/// The captured result of a sandboxed program.
#[derive(Debug)]
pub struct SandboxOutput {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl SandboxOutput {
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// A confined view of one unpacked root filesystem.
#[derive(Debug, Clone)]
pub struct Sandbox {
    rootfs: PathBuf,
    bwrap: PathBuf,
    bytecode_cache: Option<PathBuf>,
}

/// Where the bytecode cache is mounted in the sandbox.
const SB_PYCACHE: &str = "/vx/pycache";

impl Sandbox {
    /// A sandbox over `rootfs` (already prepared with [`prepare_rootfs`]).
    pub fn new(rootfs: &Path) -> Result<Self, SandboxError> {
        let bwrap = find_on_path("bwrap").ok_or(SandboxError::BwrapMissing)?;
        Ok(Sandbox {
            rootfs: rootfs.to_path_buf(),
            bwrap,
            bytecode_cache: None,
        })
    }

    /// Keep the bytecode of Python programs that ask for it ([`SandboxCommand::python_bytecode`])
    /// in `dir` (PYTHONPYCACHEPREFIX), across runs and builds of the same base. Official python
    /// images ship no .pyc and the rootfs is read-only, so without it every pip run compiles pip
    /// again (0.5 s of a 0.5 s resolution). Python checks each .pyc against its source's mtime
    /// and size; nothing the build installs is compiled here (pip runs with --no-compile, and
    /// --compile-bytecode does not ask for the cache).
    pub fn with_bytecode_cache(mut self, dir: PathBuf) -> Self {
        self.bytecode_cache = Some(dir);
        self
    }

    pub fn rootfs(&self) -> &Path {
        &self.rootfs
    }

    /// The bwrap argument list for a command (exposed for tests and `-v` logging).
    pub fn args(&self, cmd: &SandboxCommand) -> Vec<std::ffi::OsString> {
        let mut a: Vec<std::ffi::OsString> = Vec::new();
        let mut push =
            |items: &[&std::ffi::OsStr]| a.extend(items.iter().map(|s| s.to_os_string()));
        push(&[
            "--unshare-user".as_ref(),
            "--uid".as_ref(),
            "0".as_ref(),
            "--gid".as_ref(),
            "0".as_ref(),
        ]);
        push(&[
            "--unshare-pid".as_ref(),
            "--unshare-ipc".as_ref(),
            "--unshare-uts".as_ref(),
        ]);
        push(&[
            "--unshare-cgroup-try".as_ref(),
            "--die-with-parent".as_ref(),
            "--new-session".as_ref(),
        ]);
        if !cmd.network {
            push(&["--unshare-net".as_ref()]);
        }
        push(&["--ro-bind".as_ref(), self.rootfs.as_os_str(), "/".as_ref()]);
        push(&[
            "--proc".as_ref(),
            "/proc".as_ref(),
            "--dev".as_ref(),
            "/dev".as_ref(),
        ]);
        push(&[
            "--tmpfs".as_ref(),
            "/tmp".as_ref(),
            "--tmpfs".as_ref(),
            "/vx".as_ref(),
        ]);
        if cmd.network {
            for f in ["/etc/resolv.conf", "/etc/hosts"] {
                if Path::new(f).is_file() {
                    push(&["--ro-bind".as_ref(), f.as_ref(), f.as_ref()]);
                }
            }
        }
        let bytecode = self.bytecode_cache.as_ref().filter(|_| cmd.python_bytecode);
        if let Some(dir) = bytecode {
            push(&["--bind".as_ref(), dir.as_os_str(), SB_PYCACHE.as_ref()]);
        }
        for b in &cmd.binds {
            let flag: &std::ffi::OsStr = if b.writable {
                "--bind".as_ref()
            } else {
                "--ro-bind".as_ref()
            };
            push(&[flag, b.host.as_os_str(), b.dest.as_ref()]);
        }
        push(&["--clearenv".as_ref()]);
        for (k, v) in &cmd.env {
            if bytecode.is_some() && k == "PYTHONDONTWRITEBYTECODE" {
                continue;
            }
            push(&["--setenv".as_ref(), k.as_ref(), v.as_ref()]);
        }
        if bytecode.is_some() {
            push(&[
                "--setenv".as_ref(),
                "PYTHONPYCACHEPREFIX".as_ref(),
                SB_PYCACHE.as_ref(),
            ]);
        }
        push(&[
            "--chdir".as_ref(),
            cmd.cwd.as_deref().unwrap_or("/tmp").as_ref(),
            "--".as_ref(),
        ]);
        for s in &cmd.argv {
            push(&[s.as_ref()]);
        }
        a
    }

    /// Run `cmd` confined; returns its exit status and captured output. A failure of the sandbox
    /// itself (no user namespaces) is an error; a failure of the program is in the output.
    pub async fn run(&self, cmd: &SandboxCommand) -> Result<SandboxOutput, SandboxError> {
        let program = cmd.argv.join(" ");
        let out = tokio::process::Command::new(&self.bwrap)
            .args(self.args(cmd))
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|source| SandboxError::Spawn { program, source })?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        // bwrap reports its own failures as "bwrap: …" with exit status 1, before running anything.
        if !out.status.success() && stderr.starts_with("bwrap:") {
            let first = stderr.lines().next().unwrap_or_default().to_string();
            if first.contains("namespace")
                || first.contains("uid map")
                || first.contains("Operation not permitted")
            {
                return Err(SandboxError::NamespacesUnavailable { detail: first });
            }
        }
        Ok(SandboxOutput {
            status: out.status,
            stdout: out.stdout,
            stderr: out.stderr,
        })
    }
}

/// Make an unpacked rootfs usable as a sandbox root: mount points for /proc, /dev, /tmp, /vx and the
/// files bound over when the network is on. This touches only vxbuild's private copy in the cache,
/// never the image: the image reuses the base's layers untouched.
pub fn prepare_rootfs(rootfs: &Path) -> Result<(), SandboxError> {
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SandboxError::Prepare { path, source }
    };
    for d in MOUNT_POINTS {
        let p = rootfs.join(d);
        if std::fs::symlink_metadata(&p)
            .map(|m| !m.is_dir())
            .unwrap_or(false)
        {
            std::fs::remove_file(&p).map_err(err(&p))?;
        }
        std::fs::create_dir_all(&p).map_err(err(&p))?;
    }
    for f in FILE_MOUNT_POINTS {
        let p = rootfs.join(f);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(err(parent))?;
        }
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.is_file() => {}
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&p).map_err(err(&p))?,
            Ok(_) => std::fs::remove_file(&p).map_err(err(&p))?,
            Err(_) => {}
        }
        if !p.exists() {
            std::fs::write(&p, b"").map_err(err(&p))?;
        }
    }
    Ok(())
}

pub(crate) fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_confine_by_default() {
        let sb = Sandbox {
            rootfs: "/r".into(),
            bwrap: "/usr/bin/bwrap".into(),
            bytecode_cache: None,
        };
        let cmd = SandboxCommand::new(["python3", "-V"])
            .env("HOME", "/tmp")
            .rw(Path::new("/s"), "/vx/staging");
        let args: Vec<String> = sb
            .args(&cmd)
            .into_iter()
            .map(|s| s.into_string().unwrap())
            .collect();
        let joined = args.join(" ");
        assert!(joined.contains("--unshare-net"), "{joined}");
        assert!(joined.contains("--ro-bind /r /"), "{joined}");
        assert!(joined.contains("--bind /s /vx/staging"), "{joined}");
        assert!(joined.contains("--clearenv --setenv HOME /tmp"), "{joined}");
        assert!(joined.ends_with("-- python3 -V"), "{joined}");
        assert!(!joined.contains("resolv.conf"), "{joined}");
        let net = sb.args(&cmd.clone().network(true));
        assert!(!net.iter().any(|a| a == "--unshare-net"));
    }

    #[test]
    fn the_bytecode_cache_is_given_only_to_programs_that_ask() {
        let sb = Sandbox {
            rootfs: "/r".into(),
            bwrap: "/usr/bin/bwrap".into(),
            bytecode_cache: None,
        }
        .with_bytecode_cache("/c/pycache".into());
        let text = |cmd: &SandboxCommand| {
            sb.args(cmd)
                .into_iter()
                .map(|s| s.into_string().unwrap())
                .collect::<Vec<_>>()
                .join(" ")
        };
        let plain = SandboxCommand::new(["python3", "-m", "compileall"])
            .env("PYTHONDONTWRITEBYTECODE", "1");
        let t = text(&plain);
        assert!(!t.contains("pycache"), "{t}");
        assert!(t.contains("--setenv PYTHONDONTWRITEBYTECODE 1"), "{t}");
        let pip = SandboxCommand {
            python_bytecode: true,
            ..plain
        };
        let t = text(&pip);
        assert!(t.contains("--bind /c/pycache /vx/pycache"), "{t}");
        assert!(
            t.contains("--setenv PYTHONPYCACHEPREFIX /vx/pycache"),
            "{t}"
        );
        assert!(!t.contains("PYTHONDONTWRITEBYTECODE"), "{t}");
    }

    #[test]
    fn prepare_creates_mount_points_and_replaces_symlinked_resolv_conf() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::os::unix::fs::symlink(
            "/run/systemd/resolve/stub-resolv.conf",
            dir.path().join("etc/resolv.conf"),
        )
        .unwrap();
        prepare_rootfs(dir.path()).unwrap();
        for d in MOUNT_POINTS {
            assert!(dir.path().join(d).is_dir());
        }
        let m = std::fs::symlink_metadata(dir.path().join("etc/resolv.conf")).unwrap();
        assert!(m.is_file());
    }
}
