//! Real parts for the end-to-end tests: a registry process, fixtures, real clients.
//!
//! Every helper panics with a message that names the command and its output when something fails,
//! so a test reads as the scenario it checks. See DEVELOPERS.md for the base image fixture.

#![allow(dead_code)]

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use base64::Engine;

pub mod stub;
pub mod token_server;
use sha2::{Digest, Sha256};

/// The tag of the base image in the fixture layout (`oci:LAYOUT:3.9-slim`).
pub const BASE_TAG: &str = "3.9-slim";
/// The repository the base is pushed to on a test registry, as on Docker Hub.
pub const BASE_REPOSITORY: &str = "library/python";

/// A `docker-registry` (the reference distribution server) on a free loopback port, killed on drop.
pub struct Registry {
    child: Child,
    /// The address it listens on: 127.0.0.1, or [`machine_ip`] for tests that need a host
    /// vxbuild does not treat as loopback.
    ip: String,
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
        Self::launch(|_| extra.to_string())
    }

    /// Start a registry that requires HTTP basic auth for `user`/`password` (a bcrypt htpasswd
    /// file made with `htpasswd` from apache2-utils).
    pub fn start_with_basic_auth(user: &str, password: &str) -> Registry {
        Self::launch(basic_auth(user, password))
    }

    /// Start on `ip` with HTTPS (a certificate for `ip` signed by `ca`) and basic auth.
    pub fn start_tls_with_basic_auth(
        ip: &str,
        ca: &TestCa,
        cert_dir: &Path,
        user: &str,
        password: &str,
    ) -> Registry {
        let (cert, key) = ca.server_cert(cert_dir, ip);
        Self::launch_on(ip, Some((&cert, &key)), basic_auth(user, password))
    }

    /// `extra` gets the config folder (for files the extra config names) and returns YAML.
    fn launch(extra: impl FnOnce(&Path) -> String) -> Registry {
        Self::launch_on("127.0.0.1", None, extra)
    }

    /// Start on `ip`, serving HTTPS with `tls` (certificate chain and key PEM files) when given,
    /// with `extra` YAML as in [`Registry::launch`].
    pub fn launch_on(
        ip: &str,
        tls: Option<(&Path, &Path)>,
        extra: impl FnOnce(&Path) -> String,
    ) -> Registry {
        let storage = tempfile::tempdir().expect("registry storage dir");
        let config_dir = tempfile::tempdir().expect("registry config dir");
        let extra = extra(config_dir.path());
        let port = free_port();
        let tls = match tls {
            Some((cert, key)) => format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            ),
            None => String::new(),
        };
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {ip}:{port}\n{tls}{extra}",
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
            ip: ip.to_string(),
            port,
            storage,
            _config: config_dir,
        };
        reg.wait_ready();
        reg
    }

    /// Kill the registry process (SIGKILL: no chance to tidy up), keeping its storage.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Start the registry again on the same address, config and storage.
    pub fn restart(&mut self) {
        self.kill();
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(self._config.path().join("registry.log"))
            .unwrap();
        self.child = Command::new("docker-registry")
            .arg("serve")
            .arg(self._config.path().join("config.yml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("restart docker-registry");
        self.wait_ready();
    }

    /// What the registry logged (level warn: requests refused and why).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._config.path().join("registry.log")).unwrap_or_default()
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect((self.ip.as_str(), self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "docker-registry did not listen on {}:{} within 20 s:\n{}",
            self.ip,
            self.port,
            self.log()
        );
    }

    /// `IP:PORT`
    pub fn host(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Push the base fixture ([`base_layout`]) to `HOST/library/python:3.9-slim` and return that
    /// reference (without a transport prefix).
    pub fn push_base(&self) -> String {
        let reference = format!("{}/{BASE_REPOSITORY}:{BASE_TAG}", self.host());
        let layout = base_layout();
        skopeo(&[
            "copy",
            "--dest-tls-verify=false",
            &format!("oci:{}:{BASE_TAG}", layout.display()),
            &format!("docker://{reference}"),
        ]);
        reference
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

/// This machine's address on its default route: a host vxbuild does not treat as loopback (no
/// plain-HTTP fallback, TLS verified), yet reachable without leaving the machine.
pub fn machine_ip() -> String {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind a UDP socket");
    // Connecting a UDP socket sends nothing; it only picks the route and so the source address.
    socket
        .connect("192.0.2.1:9")
        .or_else(|_| socket.connect("10.255.255.1:9"))
        .expect("this machine has a default route (the TLS tests need a non-loopback address)");
    let ip = socket.local_addr().unwrap().ip();
    assert!(
        !ip.is_loopback() && !ip.is_unspecified(),
        "no non-loopback address on this machine ({ip})"
    );
    ip.to_string()
}

/// A certificate authority made for one test, and server certificates it signs.
pub struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    /// `ca.crt` (PEM).
    pub cert: PathBuf,
}

impl TestCa {
    pub fn new(dir: &Path) -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "vxbuild test CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let issuer = rcgen::CertifiedIssuer::self_signed(params, key).unwrap();
        std::fs::create_dir_all(dir).unwrap();
        let cert = dir.join("ca.crt");
        std::fs::write(&cert, issuer.pem()).unwrap();
        TestCa { issuer, cert }
    }

    /// A server certificate for `host` (an IP address or a DNS name) and its key, as PEM files
    /// `DIR/server.crt` and `DIR/server.key`.
    pub fn server_cert(&self, dir: &Path, host: &str) -> (PathBuf, PathBuf) {
        let mut params = rcgen::CertificateParams::new(vec![host.to_string()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, host);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        std::fs::create_dir_all(dir).unwrap();
        let (c, k) = (dir.join("server.crt"), dir.join("server.key"));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }
}

/// The `auth: htpasswd` config for `user`/`password` (a bcrypt htpasswd file made with
/// `htpasswd` from apache2-utils, written to the registry's config folder).
pub fn basic_auth(user: &str, password: &str) -> impl FnOnce(&Path) -> String {
    let entry = run(Command::new("htpasswd").args(["-nbB", user, password])).stdout;
    move |config_dir| {
        let path = config_dir.join("htpasswd");
        std::fs::write(&path, &entry).expect("write htpasswd file");
        format!(
            "auth:\n  htpasswd:\n    realm: vxbuild-test\n    path: {}\n",
            path.display()
        )
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

/// `$PATH` with `dir` (created if missing) in front: for stand-in commands (a credential helper,
/// gcloud) that must win over the machine's own.
pub fn path_with_first(dir: &Path) -> std::ffi::OsString {
    std::fs::create_dir_all(dir).unwrap();
    std::env::join_paths(
        std::iter::once(dir.to_path_buf()).chain(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        )),
    )
    .unwrap()
}

/// Assert that a run printed `needle` on stdout; the message shows both streams.
pub fn assert_stdout_contains(out: &Output, needle: &str) {
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        stdout.contains(needle),
        "expected {needle:?} on stdout\nstdout: {stdout}\nstderr: {stderr}"
    );
}

/// Write an executable script at `path` (its folder created if missing).
pub fn write_executable(path: &Path, script: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, script).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// The checkout this test binary was built from.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The python:3.9-slim fixture as an OCI layout (tag [`BASE_TAG`]): `$VXBUILD_BASE_LAYOUT` if set
/// (scripts/test.sh sets it), else built or taken from the cache by `tests/fixtures/base-image.sh`,
/// once per test process.
pub fn base_layout() -> PathBuf {
    static LAYOUT: OnceLock<PathBuf> = OnceLock::new();
    LAYOUT
        .get_or_init(|| {
            let layout = match std::env::var_os("VXBUILD_BASE_LAYOUT") {
                Some(dir) => PathBuf::from(dir),
                None => {
                    let script = repo_root().join("tests/fixtures/base-image.sh");
                    // The script logs its progress to stderr; let it through, it can take a minute.
                    let out = run(Command::new("bash").arg(&script).stderr(Stdio::inherit()));
                    let stdout = String::from_utf8_lossy(&out.stdout);
                    let last = stdout.lines().last().unwrap_or_default().trim();
                    assert!(!last.is_empty(), "{} printed no layout path", script.display());
                    PathBuf::from(last)
                }
            };
            assert!(
                layout.join("index.json").is_file(),
                "base layout {} has no index.json (VXBUILD_BASE_LAYOUT or tests/fixtures/base-image.sh is wrong)",
                layout.display()
            );
            layout
        })
        .clone()
}

/// The path of the `vxbuild` binary under test, as a fresh command.
pub fn vxbuild() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vxbuild"))
}

/// vxbuild started with `args`: stdin closed, stdout and stderr piped (for a test that acts while
/// it runs).
pub fn spawn_vxbuild<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> std::process::Child {
    vxbuild()
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Run a prepared command to completion, panicking with its status and output unless it succeeds.
pub fn run(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("could not start {shown}: {e}"));
    assert!(
        out.status.success(),
        "{shown} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Run `skopeo ARGS...` (with `--insecure-policy`: tests trust what they pushed) and return its
/// stdout. For flags the other helpers don't take, such as `--creds`.
pub fn skopeo(args: &[&str]) -> Vec<u8> {
    run(Command::new("skopeo").arg("--insecure-policy").args(args)).stdout
}

/// `docker://` unless the reference already names a transport (`oci:`, `docker://`, …).
fn with_transport(reference: &str) -> String {
    const TRANSPORTS: [&str; 5] = [
        "docker://",
        "oci:",
        "oci-archive:",
        "docker-archive:",
        "dir:",
    ];
    if TRANSPORTS.iter().any(|t| reference.starts_with(t)) {
        reference.to_string()
    } else {
        format!("docker://{reference}")
    }
}

fn parse_json(bytes: &[u8], what: &str) -> serde_json::Value {
    serde_json::from_slice(bytes).unwrap_or_else(|e| {
        panic!(
            "{what} is not JSON ({e}):\n{}",
            String::from_utf8_lossy(bytes)
        )
    })
}

/// The manifest (or index) of an image exactly as the registry serves it (`skopeo inspect --raw`).
/// `reference` is `HOST/REPO:TAG` or `HOST/REPO@DIGEST` (plain HTTP), or carries its transport.
pub fn skopeo_inspect_raw(reference: &str) -> serde_json::Value {
    let reference = with_transport(reference);
    let out = skopeo(&["inspect", "--raw", "--tls-verify=false", &reference]);
    parse_json(&out, &format!("manifest of {reference}"))
}

/// The image config blob (`skopeo inspect --config`), for the linux/amd64 image of an index.
pub fn skopeo_inspect_config(reference: &str) -> serde_json::Value {
    let reference = with_transport(reference);
    let out = skopeo(&["inspect", "--config", "--tls-verify=false", &reference]);
    parse_json(&out, &format!("config of {reference}"))
}

/// Pull an image from a (plain-HTTP) registry into an OCI layout under `dir` with skopeo, which
/// checks every blob against its digest, then unpack it with umoci. Returns the rootfs.
pub fn pull_and_unpack(reference: &str, dir: &Path) -> PathBuf {
    let layout = dir.join("pulled");
    skopeo(&[
        "copy",
        "--src-tls-verify=false",
        &with_transport(reference),
        &format!("oci:{}:pulled", layout.display()),
    ]);
    unpack_layout(&layout, "pulled", dir)
}

/// Unpack `layout:tag` (an OCI layout, e.g. one vxbuild wrote) with `umoci unpack` into a new
/// bundle under `dir` (`--rootless` when not root). Returns the bundle's rootfs.
pub fn unpack_layout(layout: &Path, tag: &str, dir: &Path) -> PathBuf {
    let bundle = (0..)
        .map(|i| {
            dir.join(if i == 0 {
                "bundle".into()
            } else {
                format!("bundle-{i}")
            })
        })
        .find(|b| !b.exists())
        .expect("a free bundle name");
    let mut cmd = Command::new("umoci");
    cmd.arg("unpack");
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        cmd.arg("--rootless");
    }
    cmd.arg("--image")
        .arg(format!("{}:{tag}", layout.display()))
        .arg(&bundle);
    run(&mut cmd);
    bundle.join("rootfs")
}

/// Start an unpacked image as its container would: the config's Entrypoint + Cmd, with only its
/// Env, in its WorkingDir, inside `rootfs` under bubblewrap (own namespaces, no network, fresh
/// /proc, /dev and /tmp, stdin empty). `config` is the image config blob or its inner `config`.
/// Returns the output whatever the exit status; a run longer than 5 minutes is killed (`timeout`,
/// status 124 or 137).
pub fn run_entrypoint(rootfs: &Path, config: &serde_json::Value) -> Output {
    run_image(rootfs, config, &[])
}

/// As [`run_entrypoint`], with `args` in place of the config's Cmd when not empty, as in
/// `docker run IMAGE ARGS...` (the Entrypoint stays).
pub fn run_image(rootfs: &Path, config: &serde_json::Value, args: &[&str]) -> Output {
    let config = config.get("config").unwrap_or(config);
    let strings = |key: &str| -> Vec<String> {
        match config.get(key) {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(v) => serde_json::from_value(v.clone())
                .unwrap_or_else(|e| panic!("config {key} is not a list of strings ({e}): {v}")),
        }
    };
    let mut argv = strings("Entrypoint");
    if args.is_empty() {
        argv.extend(strings("Cmd"));
    } else {
        argv.extend(args.iter().map(|a| a.to_string()));
    }
    assert!(
        !argv.is_empty(),
        "image config has neither Entrypoint nor Cmd: {config}"
    );
    let workdir = match config.get("WorkingDir").and_then(|w| w.as_str()) {
        Some(w) if !w.is_empty() => w.to_string(),
        _ => "/".to_string(),
    };

    let mut cmd = Command::new("timeout");
    cmd.args(["--kill-after=10", "300", "bwrap"])
        .arg("--bind")
        .arg(rootfs)
        .arg("/")
        .args(["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"])
        .args(["--unshare-all", "--die-with-parent", "--clearenv"])
        .args(["--chdir", &workdir]);
    for entry in strings("Env") {
        let (key, value) = entry.split_once('=').unwrap_or((&entry, ""));
        cmd.args(["--setenv", key, value]);
    }
    cmd.arg("--").args(&argv).stdin(Stdio::null());
    cmd.output().unwrap_or_else(|e| {
        panic!(
            "could not start bwrap for {argv:?} in {}: {e}",
            rootfs.display()
        )
    })
}

/// Write a tiny, valid `NAME-VERSION-py3-none-any.whl` into `dir` holding `files` (path in the
/// wheel, content) plus its dist-info (METADATA, WHEEL, RECORD with sha256 entries). Stored (not
/// deflated), entries sorted, timestamps 1980-01-01: the same input gives the same bytes.
pub fn make_wheel(dir: &Path, name: &str, version: &str, files: &[(&str, &str)]) -> PathBuf {
    make_wheel_requiring(dir, name, version, files, &[])
}

/// As [`make_wheel`], with a `Requires-Dist:` line in METADATA for each of `requires`
/// (e.g. `"other-pkg>=1.0"`).
pub fn make_wheel_requiring(
    dir: &Path,
    name: &str,
    version: &str,
    files: &[(&str, &str)],
    requires: &[&str],
) -> PathBuf {
    // Wheel file names escape the distribution name (binary distribution format spec).
    let escaped = name
        .split(['-', '_', '.'])
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join("_")
        .to_lowercase();
    let dist_info = format!("{escaped}-{version}.dist-info");

    let mut metadata = format!("Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n");
    for req in requires {
        metadata.push_str(&format!("Requires-Dist: {req}\n"));
    }
    let wheel =
        "Wheel-Version: 1.0\nGenerator: vxbuild-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n";

    let mut entries: Vec<(String, Vec<u8>)> = files
        .iter()
        .map(|(path, content)| (path.to_string(), content.as_bytes().to_vec()))
        .collect();
    entries.sort();
    entries.push((format!("{dist_info}/METADATA"), metadata.into_bytes()));
    entries.push((format!("{dist_info}/WHEEL"), wheel.as_bytes().to_vec()));
    let mut record = String::new();
    for (path, content) in &entries {
        let digest =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(content));
        record.push_str(&format!("{path},sha256={digest},{}\n", content.len()));
    }
    record.push_str(&format!("{dist_info}/RECORD,,\n"));
    entries.push((format!("{dist_info}/RECORD"), record.into_bytes()));

    let path = dir.join(format!("{escaped}-{version}-py3-none-any.whl"));
    let file = std::fs::File::create(&path)
        .unwrap_or_else(|e| panic!("create wheel {}: {e}", path.display()));
    let mut zip = zip::ZipWriter::new(file);
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .last_modified_time(zip::DateTime::default())
        .unix_permissions(0o644);
    for (name, content) in &entries {
        zip.start_file(name.as_str(), options)
            .and_then(|()| zip.write_all(content).map_err(Into::into))
            .unwrap_or_else(|e| panic!("write {name} into {}: {e}", path.display()));
    }
    zip.finish()
        .unwrap_or_else(|e| panic!("finish wheel {}: {e}", path.display()));
    path
}
