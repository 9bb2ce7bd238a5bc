//! The OCI distribution client: manifests and blobs, in and out, one instance per build.
//!
//! - Scheme: HTTPS, verified against the system's trust roots plus `SSL_CERT_FILE` and the
//!   host's certs.d folder (`tls`). Hosts in [`ClientOptions::insecure_registries`] and loopback
//!   hosts (as docker allows) get HTTPS without verification first and plain HTTP if that cannot
//!   connect; the choice is remembered per host.
//! - Auth: a 401's `WWW-Authenticate` is answered once: Bearer with a token from the realm (GET
//!   with Basic credentials when there are some, else anonymously; an identity token is exchanged
//!   with the OAuth2 POST), Basic with the credentials (`auth`, `google`). Tokens are cached per
//!   (host, scope). Secrets never go over plain HTTP to another machine, never to a host other
//!   than the registry (an upload location elsewhere, or a redirect: reqwest drops
//!   `Authorization` when a redirect changes host, port or scheme), and never into an error
//!   message or `Debug` output.
//! - Streaming: blobs are hashed while they download into the cache and committed only if digest
//!   and size match; uploads stream the file as one monolithic PUT.
//! - Requests are data ([`transport::RequestSpec`]) sent through one function.
//! - Flaky networks: every operation is retried as a whole under [`retry::Policy`] (connection
//!   failures, timeouts, 408, 429, 5xx; a few tries within about a minute). A blob download
//!   starts over into a fresh temp file; a blob upload starts over with a fresh session, unless a
//!   HEAD shows that the failed commit landed after all. Connect and read timeouts bound every
//!   request, so a dead registry ends in an error naming its host.

mod auth;
mod error;
mod google;
mod retry;
mod tls;
mod transport;

use std::collections::HashMap;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::header;
use reqwest::{Method, StatusCode};

pub use auth::{Challenge, Credentials, DockerConfig, parse_challenges};
pub use error::{ErrorDetails, Operation, RegistryError};

use crate::cache::{Cache, CacheError};
use crate::digest::{Digest, HashingWriter};
use crate::oci::{self, Descriptor};
use crate::reference::Reference;
use auth::{Scopes, Token};
use transport::{Body, Endpoint, RequestSpec, Scheme, Target};

/// Largest manifest we accept (containerd's limit).
const MAX_MANIFEST_BYTES: usize = 4 << 20;
const DOWNLOAD_BUFFER: usize = 256 * 1024;
/// How long to wait for a TCP (and TLS) connection to a registry.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request may wait for its response, and a response body between two reads (so large
/// downloads are fine). Uploads stream from disk and are bounded by progress instead
/// ([`transport::STALL_TIMEOUT`]).
const READ_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct ClientOptions {
    /// `HOST[:PORT]` entries allowed plain HTTP and unverified TLS (loopback hosts always are).
    pub insecure_registries: Vec<String>,
    /// Docker's config.json for credentials; default `$DOCKER_CONFIG/config.json` or
    /// `~/.docker/config.json`.
    pub docker_config: Option<PathBuf>,
    /// How many registry operations may run at once.
    pub max_concurrent: usize,
    /// Receives a line per request and per credential lookup (`-v`); never a secret.
    pub trace: Option<std::sync::Arc<dyn crate::report::Reporter>>,
    /// Schemes earlier builds found for loopback and insecure hosts (`true` = HTTPS), so this one
    /// need not try HTTPS first again; see [`RegistryClient::learned_schemes`].
    pub known_schemes: Vec<(String, bool)>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            insecure_registries: Vec::new(),
            docker_config: None,
            max_concurrent: 8,
            trace: None,
            known_schemes: Vec::new(),
        }
    }
}

/// A manifest or index as the registry served it.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    /// The exact bytes (their digest is the manifest's identity).
    pub bytes: Vec<u8>,
    /// From `Content-Type`, or the body's `mediaType` when the header is generic.
    pub media_type: String,
    pub digest: Digest,
}

/// The HTTP clients for one trust configuration, each built on first use (a warm build that
/// only talks to a loopback registry never sets up certificate verification).
pub(crate) struct Clients {
    trust: tls::Trust,
    extra_roots: Vec<reqwest::Certificate>,
    /// [verified, unverified (insecure and loopback hosts)] × [with a read timeout, for
    /// streamed uploads: reqwest's read timeout would cover the whole upload, so these have none
    /// and `transport` watches the upload's progress instead].
    cells: [std::sync::OnceLock<reqwest::Client>; 4],
}

impl Clients {
    fn new(trust: &tls::Trust, extra_roots: &[reqwest::Certificate]) -> Self {
        Clients {
            trust: trust.clone(),
            extra_roots: extra_roots.to_vec(),
            cells: Default::default(),
        }
    }

    pub(crate) fn get(&self, verify: bool, upload: bool) -> Result<reqwest::Client, RegistryError> {
        let cell = &self.cells[usize::from(verify) * 2 + usize::from(upload)];
        if let Some(c) = cell.get() {
            return Ok(c.clone());
        }
        let b = if verify {
            self.trust.builder(&self.extra_roots)?
        } else {
            self.trust
                .plain_builder()
                .tls_danger_accept_invalid_certs(true)
        };
        let b = b
            .user_agent(concat!("vxbuild/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(CONNECT_TIMEOUT);
        let b = if upload {
            b
        } else {
            b.read_timeout(READ_TIMEOUT)
        };
        let c = b.build().map_err(RegistryError::ClientSetup)?;
        Ok(cell.get_or_init(|| c).clone())
    }
}

/// Whether `host`'s scheme is found by trying (loopback, or named by --insecure-registry): the only
/// hosts whose scheme is remembered across builds, and reused only while that still holds.
fn may_fall_back_to_http(host: &str, insecure_registries: &[String]) -> bool {
    transport::scheme_policy(host, insecure_registries) == transport::SchemePolicy::HttpsThenHttp
}

/// An OCI distribution client. Holds per-process state: schemes per host, known challenges,
/// cached tokens. `Debug` shows no secret.
pub struct RegistryClient {
    /// For hosts without a certs.d folder of their own.
    clients: Arc<Clients>,
    trust: tls::Trust,
    /// Hosts whose certs.d folder was looked at: their own clients, or the shared ones.
    host_clients: Mutex<HashMap<String, Arc<Clients>>>,
    insecure_registries: Vec<String>,
    config: DockerConfig,
    schemes: Mutex<HashMap<String, Scheme>>,
    /// Hosts whose scheme came from `known_schemes` and has not been confirmed yet.
    seeded_schemes: Mutex<std::collections::HashSet<String>>,
    challenges: Mutex<HashMap<String, Challenge>>,
    tokens: Mutex<HashMap<(String, String), Token>>,
    token_fetch: tokio::sync::Mutex<()>,
    limit: tokio::sync::Semaphore,
    retry: retry::Policy,
    trace: Option<std::sync::Arc<dyn crate::report::Reporter>>,
}

impl std::fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClient")
            .field("insecure_registries", &self.insecure_registries)
            .field("docker_config", &self.config.path)
            .field("trust", &self.trust)
            .finish_non_exhaustive()
    }
}

impl RegistryClient {
    pub fn new(opts: ClientOptions) -> Result<Self, RegistryError> {
        let trust = tls::Trust::from_env()?;
        let clients = Arc::new(Clients::new(&trust, &[]));
        let config = match opts.docker_config.or_else(DockerConfig::default_path) {
            Some(path) => DockerConfig::load(&path)?,
            None => DockerConfig::default(),
        };
        let insecure_registries: Vec<String> = opts
            .insecure_registries
            .iter()
            .map(|e| transport::normalize_host_entry(e))
            .collect();
        // Only for hosts this build lets fall back to HTTP: a host an earlier build named with
        // --insecure-registry is verified HTTPS again once this one does not.
        let seeds: Vec<(String, bool)> = opts
            .known_schemes
            .into_iter()
            .filter(|(h, _)| may_fall_back_to_http(h, &insecure_registries))
            .collect();
        Ok(RegistryClient {
            clients,
            trust,
            host_clients: Mutex::new(HashMap::new()),
            insecure_registries,
            config,
            schemes: Mutex::new(
                seeds
                    .iter()
                    .map(|(h, https)| {
                        let scheme = if *https { Scheme::Https } else { Scheme::Http };
                        (h.clone(), scheme)
                    })
                    .collect(),
            ),
            seeded_schemes: Mutex::new(seeds.iter().map(|(h, _)| h.clone()).collect()),
            challenges: Mutex::new(HashMap::new()),
            tokens: Mutex::new(HashMap::new()),
            token_fetch: tokio::sync::Mutex::new(()),
            limit: tokio::sync::Semaphore::new(opts.max_concurrent.max(1)),
            retry: retry::Policy::default(),
            trace: opts.trace,
        })
    }

    /// The schemes found for loopback and insecure hosts (`true` = HTTPS), sorted, for the next
    /// build's [`ClientOptions::known_schemes`].
    pub fn learned_schemes(&self) -> Vec<(String, bool)> {
        let mut v: Vec<(String, bool)> = self
            .schemes
            .lock()
            .expect("scheme map lock")
            .iter()
            .filter(|(h, _)| may_fall_back_to_http(h, &self.insecure_registries))
            .map(|(h, s)| (h.clone(), *s == Scheme::Https))
            .collect();
        v.sort();
        v
    }

    /// A `-v` line, built only when someone reads it.
    pub(crate) fn trace(&self, line: impl FnOnce() -> String) {
        if let Some(t) = &self.trace {
            t.debug(&line());
        }
    }

    /// The clients for `host`: its own when a certs.d folder holds CA certificates for it.
    pub(crate) fn clients_for(&self, host: &str) -> Result<Arc<Clients>, RegistryError> {
        let key = host.to_ascii_lowercase();
        let mut map = self.host_clients.lock().expect("host clients lock");
        if let Some(c) = map.get(&key) {
            return Ok(c.clone());
        }
        let found = self.trust.host_certificates(&key)?;
        let clients = if found.is_empty() {
            self.clients.clone()
        } else {
            let extra: Vec<reqwest::Certificate> =
                found.into_iter().flat_map(|(_, certs)| certs).collect();
            Arc::new(Clients::new(&self.trust, &extra))
        };
        map.insert(key, clients.clone());
        Ok(clients)
    }

    async fn permit(&self) -> tokio::sync::SemaphorePermit<'_> {
        self.limit
            .acquire()
            .await
            .expect("the semaphore is never closed")
    }

    /// Fetch a manifest or index: by `r.digest` when given (and verify it), else by
    /// `r.tag_or_latest()`. A `Docker-Content-Digest` header, when present, is verified too.
    pub async fn get_manifest(&self, r: &Reference) -> Result<FetchedManifest, RegistryError> {
        let op = Operation::FetchManifest {
            reference: r.to_string(),
        };
        let _permit = self.permit().await;
        let ep = Endpoint::of(r);
        let which = match &r.digest {
            Some(d) => d.to_string(),
            None => r.tag_or_latest().to_string(),
        };
        let spec = RequestSpec::new(
            Method::GET,
            Target::Path(format!("/v2/{}/manifests/{which}", r.repository)),
        )
        .header(header::ACCEPT, oci::MANIFEST_ACCEPT);
        self.retry
            .run(|_| self.get_manifest_once(ep, r, &op, &spec))
            .await
    }

    /// One pull-scoped request that must answer 200 OK; anything else becomes the registry's error.
    async fn pull_ok(
        &self,
        ep: Endpoint<'_>,
        r: &Reference,
        op: &Operation,
        spec: &RequestSpec,
    ) -> Result<reqwest::Response, RegistryError> {
        let resp = self
            .execute(ep, &Scopes::pull(&r.repository), op, spec)
            .await?;
        if resp.status() != StatusCode::OK {
            return Err(self.error_from_response(ep, op, resp).await);
        }
        Ok(resp)
    }

    async fn get_manifest_once(
        &self,
        ep: Endpoint<'_>,
        r: &Reference,
        op: &Operation,
        spec: &RequestSpec,
    ) -> Result<FetchedManifest, RegistryError> {
        let resp = self.pull_ok(ep, r, op, spec).await?;
        let op = op.clone();
        let header_digest = header_str(&resp, "docker-content-digest");
        let content_type = transport::content_type(&resp);
        let mut bytes = Vec::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|source| RegistryError::Transport {
                op: op.clone().into(),
                host: ep.host.to_string(),
                attempts: 1,
                source: transport::scrub(source),
            })?;
            if bytes.len() + chunk.len() > MAX_MANIFEST_BYTES {
                return Err(RegistryError::InvalidResponse {
                    op: op.into(),
                    problem: format!("the manifest is larger than {MAX_MANIFEST_BYTES} bytes"),
                });
            }
            bytes.extend_from_slice(&chunk);
        }
        let digest = Digest::of(&bytes);
        if let Some(expected) = &r.digest
            && *expected != digest
        {
            return Err(RegistryError::DigestMismatch {
                op: op.into(),
                expected: expected.clone(),
                actual: digest,
            });
        }
        verify_digest_header(&op, header_digest.as_deref(), &digest)?;
        let media_type = manifest_media_type(content_type.as_deref(), &bytes).ok_or_else(|| {
            RegistryError::InvalidResponse {
                op: op.clone().into(),
                problem: "the manifest has no media type (neither Content-Type nor mediaType)"
                    .into(),
            }
        })?;
        Ok(FetchedManifest {
            bytes,
            media_type,
            digest,
        })
    }

    /// Download a blob into the cache, hashing while streaming; it is committed only if its digest
    /// and size match `desc`, else nothing is left behind. Skipped when the cache has it.
    pub async fn fetch_blob(
        &self,
        r: &Reference,
        desc: &Descriptor,
        cache: &Cache,
    ) -> Result<PathBuf, RegistryError> {
        if cache.has_blob(&desc.digest, Some(desc.size)) {
            return Ok(cache.blob_path(&desc.digest));
        }
        let op = Operation::FetchBlob {
            repository: r.name(),
            digest: desc.digest.clone(),
        };
        let _permit = self.permit().await;
        let ep = Endpoint::of(r);
        let spec = RequestSpec::new(
            Method::GET,
            Target::Path(format!("/v2/{}/blobs/{}", r.repository, desc.digest)),
        );
        // Each try downloads from the start into a fresh temp file; verification is per try.
        self.retry
            .run(|_| self.fetch_blob_once(ep, r, desc, cache, &op, &spec))
            .await
    }

    async fn fetch_blob_once(
        &self,
        ep: Endpoint<'_>,
        r: &Reference,
        desc: &Descriptor,
        cache: &Cache,
        op: &Operation,
        spec: &RequestSpec,
    ) -> Result<PathBuf, RegistryError> {
        let resp = self.pull_ok(ep, r, op, spec).await?;
        let op = op.clone();
        if let Some(len) = resp.content_length()
            && len != desc.size
        {
            return Err(RegistryError::SizeMismatch {
                op: op.into(),
                expected: desc.size,
                actual: len,
            });
        }

        // Disk writes and hashing on a blocking thread, fed chunk by chunk.
        let cache_w = cache.clone();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(16);
        let writer = tokio::task::spawn_blocking(move || {
            let tmp = cache_w.tempfile()?;
            let mut w = HashingWriter::new(BufWriter::with_capacity(DOWNLOAD_BUFFER, tmp));
            while let Some(chunk) = rx.blocking_recv() {
                w.write_all(&chunk)?;
            }
            let (buf, digest, size) = w.finish();
            let tmp = buf.into_inner().map_err(|e| e.into_error())?;
            Ok::<_, std::io::Error>((tmp, digest, size))
        });
        let mut received: u64 = 0;
        let mut stream = resp.bytes_stream();
        let streamed = loop {
            match stream.next().await {
                Some(Ok(chunk)) => {
                    received += chunk.len() as u64;
                    if received > desc.size {
                        break Err(RegistryError::SizeMismatch {
                            op: op.clone().into(),
                            expected: desc.size,
                            actual: received,
                        });
                    }
                    if tx.send(chunk).await.is_err() {
                        break Ok(()); // the writer failed; its error is reported below
                    }
                }
                Some(Err(source)) => {
                    break Err(RegistryError::Transport {
                        op: op.clone().into(),
                        host: ep.host.to_string(),
                        attempts: 1,
                        source: transport::scrub(source),
                    });
                }
                None => break Ok(()),
            }
        };
        drop(tx);
        let written = writer.await.expect("blob writer task panicked");
        streamed?;
        let (tmp, digest, size) = written.map_err(|source| RegistryError::Cache {
            op: op.clone().into(),
            source: CacheError::Write {
                what: desc.digest.to_string(),
                source,
            },
        })?;
        if size != desc.size {
            return Err(RegistryError::SizeMismatch {
                op: op.into(),
                expected: desc.size,
                actual: size,
            });
        }
        if digest != desc.digest {
            return Err(RegistryError::DigestMismatch {
                op: op.into(),
                expected: desc.digest.clone(),
                actual: digest,
            });
        }
        let cache_c = cache.clone();
        let expected = desc.digest.clone();
        tokio::task::spawn_blocking(move || {
            cache_c.commit_blob(tmp, &digest, size, Some((&expected, size)))
        })
        .await
        .expect("cache commit task panicked")
        .map_err(|source| RegistryError::Cache {
            op: op.into(),
            source,
        })
    }

    /// Whether the repository has the blob (HEAD).
    pub async fn blob_exists(&self, r: &Reference, digest: &Digest) -> Result<bool, RegistryError> {
        let op = Operation::CheckBlob {
            repository: r.name(),
            digest: digest.clone(),
        };
        let _permit = self.permit().await;
        let ep = Endpoint::of(r);
        self.retry
            .run(|_| self.blob_exists_once(ep, &r.repository, digest, &op))
            .await
    }

    /// One HEAD for a blob, under a permit the caller holds.
    async fn blob_exists_once(
        &self,
        ep: Endpoint<'_>,
        repository: &str,
        digest: &Digest,
        op: &Operation,
    ) -> Result<bool, RegistryError> {
        let spec = RequestSpec::new(
            Method::HEAD,
            Target::Path(format!("/v2/{repository}/blobs/{digest}")),
        );
        let resp = self
            .execute(ep, &Scopes::pull(repository), op, &spec)
            .await?;
        match resp.status() {
            StatusCode::OK => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(self.error_from_response(ep, op, resp).await),
        }
    }

    /// Ask the registry to link a blob from another repository on the same registry. `true` on
    /// 201; `false` when it started an upload instead (that session is cancelled).
    pub async fn mount_blob(
        &self,
        target: &Reference,
        digest: &Digest,
        from_repository: &str,
    ) -> Result<bool, RegistryError> {
        let op = Operation::MountBlob {
            repository: target.name(),
            from: format!("{}/{from_repository}", target.registry),
            digest: digest.clone(),
        };
        let _permit = self.permit().await;
        let ep = Endpoint::of(target);
        let scopes = Scopes::mount(&target.repository, from_repository);
        let mut url_query = url::form_urlencoded::Serializer::new(String::new());
        url_query
            .append_pair("mount", digest.as_str())
            .append_pair("from", from_repository);
        let spec = RequestSpec::new(
            Method::POST,
            Target::Path(format!(
                "/v2/{}/blobs/uploads/?{}",
                target.repository,
                url_query.finish()
            )),
        )
        .body(Body::Bytes(Bytes::new()));
        self.retry
            .run(|_| self.mount_blob_once(ep, &scopes, &op, &spec))
            .await
    }

    async fn mount_blob_once(
        &self,
        ep: Endpoint<'_>,
        scopes: &Scopes,
        op: &Operation,
        spec: &RequestSpec,
    ) -> Result<bool, RegistryError> {
        let resp = self.execute(ep, scopes, op, spec).await?;
        match resp.status() {
            StatusCode::CREATED => Ok(true),
            StatusCode::ACCEPTED => {
                // Not mountable; the registry opened an upload we will not use. Cancel it, best
                // effort: an abandoned session is garbage-collected by the registry anyway.
                if let Some(loc) = header_str(&resp, "location")
                    && let Some(url) = transport::resolve_location(resp.url(), &loc)
                {
                    let cancel = RequestSpec::new(Method::DELETE, Target::Url(url));
                    let _ = self.execute(ep, scopes, op, &cancel).await;
                }
                Ok(false)
            }
            _ => Err(self.error_from_response(ep, op, resp).await),
        }
    }

    /// Start an upload session in `target`'s repository now (the POST), for a blob that is not
    /// ready yet: a push opens those of its application layer and config while they are written,
    /// and those of the next build's while it uploads (`publish::registry::Sessions`). Its
    /// location goes to [`RegistryClient::push_blob`].
    pub async fn start_upload(&self, target: &Reference) -> Result<url::Url, RegistryError> {
        let op = Operation::StartUpload {
            repository: target.name(),
        };
        let ep = Endpoint::of(target);
        self.start_session(
            ep,
            &target.repository,
            &Scopes::push(&target.repository),
            &op,
        )
        .await
    }

    /// Upload a blob from `path`: POST for an upload location (or `session`, from
    /// [`RegistryClient::start_upload`], for the first try), then one monolithic PUT `?digest=`
    /// streaming the file (`Content-Length: size`, never the whole file in memory).
    pub async fn push_blob(
        &self,
        target: &Reference,
        digest: &Digest,
        size: u64,
        path: &Path,
        session: Option<url::Url>,
    ) -> Result<(), RegistryError> {
        let op = Operation::PushBlob {
            repository: target.name(),
            digest: digest.clone(),
        };
        let meta = tokio::fs::metadata(path)
            .await
            .map_err(|source| RegistryError::ReadFile {
                op: op.clone().into(),
                path: path.to_path_buf(),
                source,
            })?;
        if meta.len() != size {
            return Err(RegistryError::SizeMismatch {
                op: op.into(),
                expected: size,
                actual: meta.len(),
            });
        }
        let _permit = self.permit().await;
        let ep = Endpoint::of(target);
        let session = Mutex::new(session);
        self.retry
            .run(|_| {
                let first = session.lock().expect("session lock").take();
                self.push_blob_once(ep, &target.repository, digest, size, path, &op, first)
            })
            .await
    }

    /// POST a new upload session; its location.
    async fn start_session(
        &self,
        ep: Endpoint<'_>,
        repository: &str,
        scopes: &Scopes,
        op: &Operation,
    ) -> Result<url::Url, RegistryError> {
        let start = RequestSpec::new(
            Method::POST,
            Target::Path(format!("/v2/{repository}/blobs/uploads/")),
        )
        .body(Body::Bytes(Bytes::new()));
        let resp = self.execute(ep, scopes, op, &start).await?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(self.error_from_response(ep, op, resp).await);
        }
        header_str(&resp, "location")
            .and_then(|loc| transport::resolve_location(resp.url(), &loc))
            .ok_or_else(|| RegistryError::InvalidResponse {
                op: op.clone().into(),
                problem: "the registry started an upload without a valid Location".into(),
            })
    }

    /// One upload: a session (`session`, or a fresh POST), then the monolithic PUT. A session
    /// given ahead that the registry no longer knows (a 4xx: purged, or the registry restarted
    /// with another secret) is replaced by a fresh one at once. When the PUT fails in a way that
    /// may hide a commit that landed (reset, timeout, 5xx), a HEAD decides (jib#4301).
    #[allow(clippy::too_many_arguments)]
    async fn push_blob_once(
        &self,
        ep: Endpoint<'_>,
        repository: &str,
        digest: &Digest,
        size: u64,
        path: &Path,
        op: &Operation,
        mut session: Option<url::Url>,
    ) -> Result<(), RegistryError> {
        let op = op.clone();
        let scopes = Scopes::push(repository);
        let committed = loop {
            let given = session.is_some();
            let mut url = match session.take() {
                Some(url) => url,
                None => self.start_session(ep, repository, &scopes, &op).await?,
            };
            url.query_pairs_mut().append_pair("digest", digest.as_str());
            let put = RequestSpec::new(Method::PUT, Target::Url(url))
                .header(header::CONTENT_TYPE, "application/octet-stream")
                .body(Body::File {
                    path: path.to_path_buf(),
                    size,
                });
            match self.execute(ep, &scopes, &op, &put).await {
                Ok(resp) if resp.status().is_success() => break Ok(resp),
                Ok(resp) if given && resp.status().is_client_error() => {
                    self.trace(|| {
                        format!(
                            "the upload session given for {digest} is gone ({}); starting another",
                            resp.status()
                        )
                    });
                }
                Ok(resp) => break Err(self.error_from_response(ep, &op, resp).await),
                Err(e) => break Err(e),
            }
        };
        let resp = match committed {
            Ok(resp) => resp,
            Err(e) => {
                if retry::retryable(&e).is_some()
                    && let Ok(true) = self.blob_exists_once(ep, repository, digest, &op).await
                {
                    return Ok(());
                }
                return Err(e);
            }
        };
        verify_digest_header(
            &op,
            header_str(&resp, "docker-content-digest").as_deref(),
            digest,
        )
    }

    /// Upload a manifest or index under a tag or its digest; returns its digest.
    pub async fn put_manifest(
        &self,
        target: &Reference,
        tag_or_digest: &str,
        media_type: &str,
        body: Vec<u8>,
    ) -> Result<Digest, RegistryError> {
        let op = Operation::PushManifest {
            reference: format!(
                "{}{}{tag_or_digest}",
                target.name(),
                if tag_or_digest.contains(':') {
                    "@"
                } else {
                    ":"
                }
            ),
        };
        let digest = Digest::of(&body);
        if let Ok(d) = tag_or_digest.parse::<Digest>() {
            if d != digest {
                return Err(RegistryError::DigestMismatch {
                    op: op.into(),
                    expected: d,
                    actual: digest,
                });
            }
        } else if target.with_tag(tag_or_digest).is_err() {
            return Err(RegistryError::InvalidArgument {
                op: op.into(),
                problem: format!("{tag_or_digest:?} is neither a valid tag nor a sha256 digest"),
            });
        }
        let _permit = self.permit().await;
        let ep = Endpoint::of(target);
        let spec = RequestSpec::new(
            Method::PUT,
            Target::Path(format!(
                "/v2/{}/manifests/{tag_or_digest}",
                target.repository
            )),
        )
        .header(header::CONTENT_TYPE, media_type)
        .body(Body::Bytes(Bytes::from(body)));
        let scopes = Scopes::push(&target.repository);
        self.retry
            .run(|_| self.put_manifest_once(ep, &scopes, &op, &spec, &digest))
            .await?;
        Ok(digest)
    }

    /// One manifest PUT; a PUT of the same bytes again is harmless, so it is simply retried.
    async fn put_manifest_once(
        &self,
        ep: Endpoint<'_>,
        scopes: &Scopes,
        op: &Operation,
        spec: &RequestSpec,
        digest: &Digest,
    ) -> Result<(), RegistryError> {
        let op = op.clone();
        let resp = self.execute(ep, scopes, &op, spec).await?;
        if !resp.status().is_success() {
            return Err(self.error_from_response(ep, &op, resp).await);
        }
        verify_digest_header(
            &op,
            header_str(&resp, "docker-content-digest").as_deref(),
            digest,
        )
    }
}

fn header_str(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_string())
}

/// Check a `Docker-Content-Digest` header against what we computed. Digests in algorithms we do
/// not compute are not checked.
fn verify_digest_header(
    op: &Operation,
    header: Option<&str>,
    actual: &Digest,
) -> Result<(), RegistryError> {
    let Some(h) = header.filter(|h| h.starts_with("sha256:")) else {
        return Ok(());
    };
    let expected: Digest = h.parse().map_err(|_| RegistryError::InvalidResponse {
        op: op.clone().into(),
        problem: format!("its Docker-Content-Digest header {h:?} is not a valid digest"),
    })?;
    if expected != *actual {
        return Err(RegistryError::DigestMismatch {
            op: op.clone().into(),
            expected,
            actual: actual.clone(),
        });
    }
    Ok(())
}

/// The manifest's media type: `Content-Type` without parameters, unless it is generic JSON or
/// absent, then the body's `mediaType`.
fn manifest_media_type(content_type: Option<&str>, body: &[u8]) -> Option<String> {
    let from_header = content_type
        .and_then(|ct| ct.split(';').next())
        .map(|ct| ct.trim().to_ascii_lowercase())
        .filter(|ct| {
            !ct.is_empty()
                && !matches!(
                    ct.as_str(),
                    "application/json" | "text/plain" | "application/octet-stream"
                )
        });
    if from_header.is_some() {
        return from_header;
    }
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
    }
    serde_json::from_slice::<Probe>(body)
        .ok()
        .and_then(|p| p.media_type)
        .filter(|m| !m.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembered_http_is_used_only_where_this_build_allows_http() {
        let client = |insecure: Vec<String>| {
            RegistryClient::new(ClientOptions {
                insecure_registries: insecure,
                docker_config: Some(PathBuf::from("/nonexistent/config.json")),
                known_schemes: vec![
                    ("127.0.0.1:5000".into(), false),
                    ("reg.example:5000".into(), false),
                ],
                ..ClientOptions::default()
            })
            .unwrap()
        };
        let seeded = |c: &RegistryClient| {
            let mut v: Vec<String> = c.schemes.lock().unwrap().keys().cloned().collect();
            v.sort();
            v
        };
        // Without --insecure-registry, reg.example gets verified HTTPS, whatever an earlier
        // build found.
        assert_eq!(seeded(&client(Vec::new())), ["127.0.0.1:5000"]);
        assert_eq!(
            seeded(&client(vec!["reg.example:5000".into()])),
            ["127.0.0.1:5000", "reg.example:5000"]
        );
    }

    #[test]
    fn media_type_from_header_or_body() {
        assert_eq!(
            manifest_media_type(
                Some("application/vnd.oci.image.index.v1+json; charset=utf-8"),
                b"{}"
            )
            .as_deref(),
            Some(oci::OCI_INDEX)
        );
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}"}}"#,
            oci::DOCKER_MANIFEST
        );
        assert_eq!(
            manifest_media_type(Some("application/json"), body.as_bytes()).as_deref(),
            Some(oci::DOCKER_MANIFEST)
        );
        assert_eq!(
            manifest_media_type(None, body.as_bytes()).as_deref(),
            Some(oci::DOCKER_MANIFEST)
        );
        assert_eq!(manifest_media_type(None, b"{}"), None);
    }

    #[test]
    fn digest_header_is_checked_when_sha256() {
        let op = Operation::PushManifest {
            reference: "r".into(),
        };
        let d = Digest::of(b"m");
        assert!(verify_digest_header(&op, None, &d).is_ok());
        assert!(verify_digest_header(&op, Some(d.as_str()), &d).is_ok());
        assert!(verify_digest_header(&op, Some("sha512:abcd"), &d).is_ok());
        assert!(matches!(
            verify_digest_header(&op, Some(Digest::of(b"n").as_str()), &d),
            Err(RegistryError::DigestMismatch { .. })
        ));
        assert!(matches!(
            verify_digest_header(&op, Some("sha256:zz"), &d),
            Err(RegistryError::InvalidResponse { .. })
        ));
    }

    #[test]
    fn debug_shows_no_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config.json");
        std::fs::write(
            &cfg,
            r#"{"auths":{"r.example":{"username":"u","password":"hunter2"}}}"#,
        )
        .unwrap();
        let c = RegistryClient::new(ClientOptions {
            docker_config: Some(cfg),
            ..ClientOptions::default()
        })
        .unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
