//! Real parts for the end-to-end tests: a registry process, fixtures, real clients.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `docker-registry` (the reference distribution server) on a free loopback port, killed on drop.
pub struct Registry {
    child: Child,
    port: u16,
    pub storage: tempfile::TempDir,
    _config: tempfile::TempDir,
}

impl Registry {
    /// Start a plain-HTTP registry with filesystem storage in a fresh temp folder.
    pub fn start() -> Registry {
        Self::start_with_extra_config("")
    }

    /// Start with extra YAML appended at the top level of the config (e.g. an `auth:` section).
    pub fn start_with_extra_config(extra: &str) -> Registry {
        let storage = tempfile::tempdir().expect("registry storage dir");
        let config_dir = tempfile::tempdir().expect("registry config dir");
        let port = free_port();
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{extra}",
            storage.path().display()
        );
        let config_path = config_dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(config_dir.path().join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("docker-registry on PATH (apt-get install docker-registry)");
        let reg = Registry {
            child,
            port,
            storage,
            _config: config_dir,
        };
        reg.wait_ready();
        reg
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "docker-registry did not listen on 127.0.0.1:{} within 20 s",
            self.port
        );
    }

    /// `127.0.0.1:PORT`
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Every blob file the registry holds (to count what a push uploaded).
    pub fn blob_count(&self) -> usize {
        let root = self.storage.path().join("docker/registry/v2/blobs/sha256");
        walk_files(&root)
            .into_iter()
            .filter(|p| p.file_name().is_some_and(|n| n == "data"))
            .count()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn walk_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}
