//! What a registry's TLS certificate is verified against, as docker, podman and skopeo do it:
//!
//! - the system's trust roots (the distribution's CA bundle),
//! - plus every certificate in `SSL_CERT_FILE` and the files of `SSL_CERT_DIR` (OpenSSL's
//!   variables; here they add to the system roots rather than replace them, so pointing
//!   `SSL_CERT_FILE` at a company CA does not break Docker Hub or PyPI),
//! - plus, for one registry only, the `*.crt` files of its `certs.d` folder:
//!   `~/.config/containers/certs.d/HOST[:PORT]/`, `/etc/containers/certs.d/HOST[:PORT]/`,
//!   `/etc/docker/certs.d/HOST[:PORT]/` (all that exist).
//!
//! A host in `--insecure-registry` (and a loopback host) is not verified at all; see
//! [`super::transport::SchemePolicy`].

use std::path::{Path, PathBuf};

use reqwest::Certificate;

use super::error::RegistryError;

/// Where distributions keep their CA bundle (the first that exists is read).
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// The trust configuration of one process. The system bundle and `SSL_CERT_FILE` are read on
/// first use: a build that talks only to loopback or insecure registries never parses them.
#[derive(Clone, Default)]
pub(crate) struct Trust {
    /// System roots plus `SSL_CERT_FILE`/`SSL_CERT_DIR`; empty when no bundle was found (then
    /// the platform's verifier finds the roots itself).
    roots: std::sync::Arc<std::sync::OnceLock<Result<Vec<Certificate>, RootsError>>>,
    /// The certs.d folders, in the order they are consulted.
    certs_d: Vec<PathBuf>,
    /// `VXBUILD_RESOLVE` host-to-address overrides.
    resolve: Vec<(String, std::net::IpAddr)>,
}

#[derive(Clone, Debug)]
struct RootsError {
    source_name: String,
    path: PathBuf,
    problem: String,
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trust")
            .field("certs_d", &self.certs_d)
            .finish_non_exhaustive()
    }
}

/// The system bundle, `SSL_CERT_FILE` and `SSL_CERT_DIR`, as [`Trust`] uses them.
fn load_roots() -> Result<Vec<Certificate>, RootsError> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    let mut roots = Vec::new();
    if let Some(bundle) = SYSTEM_BUNDLES.iter().map(Path::new).find(|p| p.is_file()) {
        // A system bundle we cannot read leaves the platform verifier to find the roots.
        if let Ok(certs) = read_certificates(bundle) {
            roots.extend(certs);
        }
    }
    if let Some(file) = var("SSL_CERT_FILE") {
        let path = PathBuf::from(file);
        let certs = read_certificates(&path).map_err(|problem| RootsError {
            source_name: "SSL_CERT_FILE".into(),
            path: path.clone(),
            problem,
        })?;
        roots.extend(certs);
    }
    if let Some(dirs) = var("SSL_CERT_DIR") {
        for dir in std::env::split_paths(&dirs).filter(|d| d.is_dir()) {
            for file in sorted_files(&dir) {
                // OpenSSL's hashed folders also hold CRLs and other files: take what parses.
                if let Ok(certs) = read_certificates(&file) {
                    roots.extend(certs);
                }
            }
        }
    }
    Ok(roots)
}

impl Trust {
    /// The certs.d folders and `VXBUILD_RESOLVE` from the environment (roots come on first use).
    pub(crate) fn from_env() -> Result<Trust, RegistryError> {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        let mut certs_d = Vec::new();
        if let Some(home) = var("HOME") {
            certs_d.push(PathBuf::from(home).join(".config/containers/certs.d"));
        }
        certs_d.push(PathBuf::from("/etc/containers/certs.d"));
        certs_d.push(PathBuf::from("/etc/docker/certs.d"));
        let resolve = match std::env::var("VXBUILD_RESOLVE") {
            Ok(v) => parse_resolve(&v).map_err(|problem| RegistryError::Setting {
                name: "VXBUILD_RESOLVE",
                problem,
            })?,
            Err(_) => Vec::new(),
        };
        Ok(Trust {
            roots: Default::default(),
            certs_d,
            resolve,
        })
    }

    /// The CA certificates configured for `host` (`HOST[:PORT]` as in the reference) in the
    /// certs.d folders, with the files they came from.
    pub(crate) fn host_certificates(
        &self,
        host: &str,
    ) -> Result<Vec<(PathBuf, Vec<Certificate>)>, RegistryError> {
        let mut out = Vec::new();
        for dir in &self.certs_d {
            let host_dir = dir.join(host);
            if !host_dir.is_dir() {
                continue;
            }
            for file in sorted_files(&host_dir) {
                if file.extension().is_some_and(|e| e == "crt") {
                    let certs =
                        read_certificates(&file).map_err(|problem| RegistryError::TrustStore {
                            source_name: format!("the certs.d folder for {host}"),
                            path: file.clone(),
                            problem,
                        })?;
                    out.push((file, certs));
                }
            }
        }
        Ok(out)
    }

    /// A client builder verifying against these roots plus `extra`.
    pub(crate) fn builder(
        &self,
        extra: &[Certificate],
    ) -> Result<reqwest::ClientBuilder, RegistryError> {
        let roots =
            self.roots
                .get_or_init(load_roots)
                .as_ref()
                .map_err(|e| RegistryError::TrustStore {
                    source_name: e.source_name.clone(),
                    path: e.path.clone(),
                    problem: e.problem.clone(),
                })?;
        let b = self.plain_builder();
        Ok(if roots.is_empty() {
            b.tls_certs_merge(extra.iter().cloned())
        } else {
            b.tls_certs_only(roots.iter().chain(extra).cloned())
        })
    }

    /// A client builder with the host overrides and no trust settings.
    pub(crate) fn plain_builder(&self) -> reqwest::ClientBuilder {
        let mut b = reqwest::Client::builder();
        for (host, ip) in &self.resolve {
            // The port comes from the URL.
            b = b.resolve(host, std::net::SocketAddr::new(*ip, 0));
        }
        b
    }

    #[cfg(test)]
    pub(crate) fn with_certs_d(certs_d: Vec<PathBuf>) -> Trust {
        Trust {
            roots: Default::default(),
            certs_d,
            resolve: Vec::new(),
        }
    }
}

/// `VXBUILD_RESOLVE=HOST=IP[,HOST=IP…]`: connect to IP whenever a registry or token URL names
/// HOST, as curl's `--resolve` does (a registry reached before its DNS exists; the tests use it
/// to serve `*-docker.pkg.dev` from this machine). TLS still verifies the certificate for HOST.
fn parse_resolve(v: &str) -> Result<Vec<(String, std::net::IpAddr)>, String> {
    v.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|e| {
            let (host, ip) = e
                .split_once('=')
                .ok_or_else(|| format!("{e:?} is not HOST=IP"))?;
            let ip = ip
                .trim()
                .parse()
                .map_err(|_| format!("{ip:?} in {e:?} is not an IP address"))?;
            Ok((host.trim().to_ascii_lowercase(), ip))
        })
        .collect()
}

/// The regular files of `dir`, sorted by name (so the order never depends on the filesystem).
fn sorted_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// Every PEM certificate in `path`; an error (as text for the message) when it cannot be read
/// or holds none.
fn read_certificates(path: &Path) -> Result<Vec<Certificate>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read it: {e}"))?;
    let certs = Certificate::from_pem_bundle(&pem)
        .map_err(|e| format!("it is not a PEM certificate bundle: {e}"))?;
    if certs.is_empty() {
        return Err("it holds no PEM certificate".into());
    }
    Ok(certs)
}

/// Whether a connection error is TLS refusing the server's certificate.
pub(crate) fn is_certificate_error(e: &reqwest::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        let text = s.to_string();
        if text.contains("certificate") || text.contains("UnknownIssuer") {
            return true;
        }
        source = s.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certs_d_files_are_found_per_host_and_bad_ones_are_named() {
        let tmp = tempfile::tempdir().unwrap();
        let a = tmp.path().join("a");
        let b = tmp.path().join("b");
        std::fs::create_dir_all(a.join("reg.example:5000")).unwrap();
        std::fs::create_dir_all(b.join("reg.example:5000")).unwrap();
        std::fs::create_dir_all(b.join("other.example")).unwrap();
        // Not a certificate: named in the error.
        std::fs::write(b.join("reg.example:5000/ca.crt"), "not pem").unwrap();
        // Ignored: not *.crt.
        std::fs::write(a.join("reg.example:5000/notes.txt"), "x").unwrap();
        let trust = Trust::with_certs_d(vec![a.clone(), b.clone()]);
        assert!(
            trust
                .host_certificates("nowhere.example")
                .unwrap()
                .is_empty()
        );
        assert!(trust.host_certificates("other.example").unwrap().is_empty());
        let err = trust
            .host_certificates("reg.example:5000")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("certs.d folder for reg.example:5000")
                && err.contains(&b.join("reg.example:5000/ca.crt").display().to_string())
                && err.contains("no PEM certificate"),
            "{err}"
        );
    }

    #[test]
    fn resolve_overrides_parse_and_name_bad_entries() {
        let r = parse_resolve("Us-Docker.pkg.dev=127.0.0.1, gcr.io=::1").unwrap();
        assert_eq!(r[0].0, "us-docker.pkg.dev");
        assert_eq!(r[1].1.to_string(), "::1");
        assert!(parse_resolve("a.example").unwrap_err().contains("HOST=IP"));
        assert!(
            parse_resolve("a.example=nope")
                .unwrap_err()
                .contains("\"nope\"")
        );
    }

    #[test]
    fn a_system_bundle_parses() {
        // The machines vxbuild runs on have one; if this one has none, nothing to check.
        if let Some(p) = SYSTEM_BUNDLES.iter().map(Path::new).find(|p| p.is_file()) {
            assert!(read_certificates(p).unwrap().len() > 10, "{}", p.display());
        }
    }
}
