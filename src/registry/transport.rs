//! One registry request: pick the scheme (HTTPS, or plain HTTP for insecure and loopback hosts),
//! attach authorization, answer a 401 challenge once.
//!
//! A request is a [`RequestSpec`]: plain data that can be sent again (a file body is reopened per
//! attempt). Retries ([`super::retry`]) wrap whole operations in `mod.rs`, since some (a blob
//! upload, a streamed download) span more than one request or a body read after `execute`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, Response, StatusCode};
use url::Url;

use super::RegistryClient;
use super::auth::{Authorization, Challenge, Scopes, TokenResponse, parse_challenges};
use super::error::{ErrorDetails, Operation, RegistryError};
use crate::reference::host_is_loopback;

/// Largest error or token body we read.
const MAX_SMALL_BODY: usize = 1 << 20;
/// Read buffer for streamed uploads.
const UPLOAD_CHUNK: usize = 256 * 1024;
/// An upload that sends nothing for this long has stalled.
pub(crate) const STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the registry may take to answer once it has the whole upload (it may verify or move
/// a large blob before it answers).
const COMMIT_TIMEOUT: Duration = Duration::from_secs(120);

/// Which registry a request is for: `registry` as written in the reference (the credentials key),
/// `host` the API host (`registry-1.docker.io` for `docker.io`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Endpoint<'a> {
    pub registry: &'a str,
    pub host: &'a str,
}

impl<'a> Endpoint<'a> {
    pub(crate) fn of(r: &'a crate::reference::Reference) -> Self {
        Endpoint {
            registry: &r.registry,
            host: r.api_host(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scheme {
    Https,
    Http,
}

impl Scheme {
    fn as_str(self) -> &'static str {
        match self {
            Scheme::Https => "https",
            Scheme::Http => "http",
        }
    }
}

/// How to reach a host whose scheme is not known yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SchemePolicy {
    /// Verified HTTPS only.
    HttpsOnly,
    /// HTTPS without certificate verification, then plain HTTP if that cannot connect: for hosts
    /// in `insecure_registries` and loopback hosts (docker treats 127.0.0.0/8 as insecure too).
    HttpsThenHttp,
}

/// An `insecure_registries` entry as a host key: scheme and trailing slash dropped, lowercased.
pub(crate) fn normalize_host_entry(entry: &str) -> String {
    let e = entry.trim();
    let e = e
        .strip_prefix("https://")
        .or_else(|| e.strip_prefix("http://"))
        .unwrap_or(e);
    e.trim_end_matches('/').to_ascii_lowercase()
}

pub(crate) fn scheme_policy(host: &str, insecure_registries: &[String]) -> SchemePolicy {
    let host = host.to_ascii_lowercase();
    if host_is_loopback(&host) || insecure_registries.contains(&host) {
        SchemePolicy::HttpsThenHttp
    } else {
        SchemePolicy::HttpsOnly
    }
}

/// Whether a failed HTTPS attempt should be retried over plain HTTP: only under
/// [`SchemePolicy::HttpsThenHttp`], and only when no HTTP exchange happened (connection refused,
/// TLS handshake failure); a registry that answered over HTTPS is never downgraded.
pub(crate) fn should_fall_back(policy: SchemePolicy, https_error_is_connect: bool) -> bool {
    policy == SchemePolicy::HttpsThenHttp && https_error_is_connect
}

/// Whether `auth` may go to `url`: secrets only over HTTPS or to this machine.
pub(crate) fn may_send_secret(url: &Url) -> bool {
    url.scheme() == "https" || url_host_port(url).is_some_and(|h| host_is_loopback(&h))
}

/// `host[:port]` of a URL (port only when explicit), as registries are written.
pub(crate) fn url_host_port(url: &Url) -> Option<String> {
    let host = match url.host()? {
        url::Host::Ipv6(a) => format!("[{a}]"),
        h => h.to_string(),
    };
    Some(match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host,
    })
}

/// Resolve an upload `Location` (absolute, or relative to the request it answered).
pub(crate) fn resolve_location(request_url: &Url, location: &str) -> Option<Url> {
    request_url.join(location).ok()
}

#[derive(Debug, Clone)]
pub(crate) enum Target {
    /// A path on the registry (`/v2/…`), sent to whichever scheme the host uses.
    Path(String),
    /// An absolute URL (an upload location).
    Url(Url),
}

#[derive(Debug, Clone)]
pub(crate) enum Body {
    None,
    Bytes(Bytes),
    /// Streamed from disk with `Content-Length: size`; never held in memory.
    File {
        path: PathBuf,
        size: u64,
    },
}

impl Body {
    fn is_file(&self) -> bool {
        matches!(self, Body::File { .. })
    }
}

/// A request as data, so it can be sent again.
#[derive(Debug, Clone)]
pub(crate) struct RequestSpec {
    pub method: Method,
    pub target: Target,
    pub headers: HeaderMap,
    pub body: Body,
}

impl RequestSpec {
    pub(crate) fn new(method: Method, target: Target) -> Self {
        RequestSpec {
            method,
            target,
            headers: HeaderMap::new(),
            body: Body::None,
        }
    }

    pub(crate) fn header(mut self, name: HeaderName, value: &str) -> Self {
        self.headers.insert(
            name,
            HeaderValue::from_str(value).expect("header values we build are valid"),
        );
        self
    }

    pub(crate) fn body(mut self, body: Body) -> Self {
        self.body = body;
        self
    }
}

enum SendError {
    Http(reqwest::Error),
    Other(RegistryError),
}

impl RegistryClient {
    /// Send `spec`, answering one authentication challenge. Returns any response other than a
    /// 401 that authentication could not fix; callers judge the status.
    pub(crate) async fn execute(
        &self,
        ep: Endpoint<'_>,
        scopes: &Scopes,
        op: &Operation,
        spec: &RequestSpec,
    ) -> Result<Response, RegistryError> {
        let auth = self.known_authorization(ep, scopes, op).await?;
        let resp = self.send(ep, op, spec, auth.as_ref()).await?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        let challenge = self.read_challenge(op, &resp)?;
        let Some(challenge) = challenge else {
            return Err(self.error_from_response(ep, op, resp).await);
        };
        self.challenges
            .lock()
            .expect("challenge map lock")
            .insert(ep.host.to_string(), challenge.clone());
        let Some(auth) = self.authorize(ep, scopes, op, &challenge, true).await? else {
            // Basic auth with no credentials to give.
            return Err(self.error_from_response(ep, op, resp).await);
        };
        self.send(ep, op, spec, Some(&auth)).await
    }

    /// The best challenge of a 401 (Bearer, else Basic); `None` if it offers neither.
    fn read_challenge(
        &self,
        op: &Operation,
        resp: &Response,
    ) -> Result<Option<Challenge>, RegistryError> {
        let mut all = Vec::new();
        for v in resp.headers().get_all(header::WWW_AUTHENTICATE) {
            let text = String::from_utf8_lossy(v.as_bytes()).into_owned();
            match parse_challenges(&text) {
                Some(cs) => all.extend(cs),
                None => {
                    return Err(RegistryError::Challenge {
                        op: op.clone().into(),
                        header: text,
                    });
                }
            }
        }
        Ok(all
            .iter()
            .find(|c| c.is_bearer())
            .or_else(|| all.iter().find(|c| c.is_basic()))
            .cloned())
    }

    /// Authorization for a host whose challenge we already know, so the first request (and any
    /// streamed body) does not have to bounce off a 401.
    async fn known_authorization(
        &self,
        ep: Endpoint<'_>,
        scopes: &Scopes,
        op: &Operation,
    ) -> Result<Option<Authorization>, RegistryError> {
        let known = self
            .challenges
            .lock()
            .expect("challenge map lock")
            .get(ep.host)
            .cloned();
        match known {
            Some(ch) => self.authorize(ep, scopes, op, &ch, false).await,
            None => Ok(None),
        }
    }

    /// Answer a challenge: a (cached, unless `refresh`) bearer token for `scopes`, or Basic
    /// credentials from the Docker config. `None` when Basic is asked and we have no credentials.
    async fn authorize(
        &self,
        ep: Endpoint<'_>,
        scopes: &Scopes,
        op: &Operation,
        ch: &Challenge,
        refresh: bool,
    ) -> Result<Option<Authorization>, RegistryError> {
        // A configured helper that failed stops the build, as it does docker's.
        if let Some(e) = self.config.helper_error(ep.registry) {
            return Err(RegistryError::CredentialHelper {
                op: op.clone().into(),
                source: e.clone(),
            });
        }
        if ch.is_basic() {
            let creds = self.config.lookup(ep.registry).cloned();
            self.trace(|| match self.config.source(ep.registry) {
                Some(source) => format!(
                    "basic auth for {} with credentials from {source}",
                    ep.registry
                ),
                None => format!("basic auth asked by {}, no credentials", ep.registry),
            });
            return Ok(creds.map(Authorization::Basic));
        }
        let key = (ep.host.to_string(), scopes.key());
        let cached = || {
            self.tokens
                .lock()
                .expect("token cache lock")
                .get(&key)
                .filter(|t| t.is_fresh())
                .cloned()
        };
        if !refresh && let Some(t) = cached() {
            return Ok(Some(Authorization::Bearer(t)));
        }
        // One token request at a time, so parallel uploads that all find the cache empty ask the
        // token server once, not once each.
        let _one = self.token_fetch.lock().await;
        if !refresh && let Some(t) = cached() {
            return Ok(Some(Authorization::Bearer(t)));
        }
        let token = self.fetch_token(ep, scopes, op, ch).await?;
        self.tokens
            .lock()
            .expect("token cache lock")
            .insert(key, token.clone());
        Ok(Some(Authorization::Bearer(token)))
    }

    /// GET realm?service=…&scope=…, with Basic credentials when we have some (else anonymously).
    async fn fetch_token(
        &self,
        ep: Endpoint<'_>,
        scopes: &Scopes,
        op: &Operation,
        ch: &Challenge,
    ) -> Result<super::auth::Token, RegistryError> {
        let invalid = |problem: String| RegistryError::InvalidResponse {
            op: op.clone().into(),
            problem,
        };
        let realm = ch
            .param("realm")
            .ok_or_else(|| invalid("its Bearer challenge has no realm".into()))?;
        let mut url = Url::parse(realm)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| invalid(format!("its token realm {realm:?} is not an http(s) URL")))?;
        let shown = format!(
            "{}://{}{}",
            url.scheme(),
            url_host_port(&url).unwrap_or_default(),
            url.path()
        );
        let creds = self.config.lookup(ep.registry);
        if creds.is_some() && !may_send_secret(&url) {
            return Err(RegistryError::InsecureCredentials {
                op: op.clone().into(),
                host: url_host_port(&url).unwrap_or_default(),
            });
        }
        let realm_host = url_host_port(&url).unwrap_or_default();
        let client = self.client(
            &realm_host,
            scheme_policy(&realm_host, &self.insecure_registries),
            false,
        )?;
        let rb = match creds.and_then(|c| c.identity_token()) {
            // An identity token (docker login with an OAuth2 registry) is a refresh token: the
            // OAuth2 form of the token protocol exchanges it, with the scopes space-separated.
            Some(refresh_token) => {
                let mut form = url::form_urlencoded::Serializer::new(String::new());
                form.append_pair("grant_type", "refresh_token")
                    .append_pair("refresh_token", refresh_token)
                    .append_pair("client_id", "vxbuild");
                if let Some(service) = ch.param("service") {
                    form.append_pair("service", service);
                }
                let scope = scopes.iter().collect::<Vec<_>>().join(" ");
                if !scope.is_empty() {
                    form.append_pair("scope", &scope);
                }
                client
                    .post(url)
                    .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .body(form.finish())
            }
            None => {
                {
                    let mut q = url.query_pairs_mut();
                    if let Some(service) = ch.param("service") {
                        q.append_pair("service", service);
                    }
                    for s in scopes.iter() {
                        q.append_pair("scope", s);
                    }
                    if let Some(c) = creds {
                        q.append_pair("account", &c.username);
                    }
                }
                let rb = client.get(url);
                match creds {
                    Some(c) => rb.header(header::AUTHORIZATION, c.basic_header()),
                    None => rb,
                }
            }
        };
        let rb = rb.header(header::ACCEPT, "application/json");
        self.trace(|| {
            let with = match self.config.source(ep.registry) {
                Some(source) => format!("with credentials from {source}"),
                None => "anonymously".to_string(),
            };
            format!(
                "token for {} from {shown} {with}",
                scopes.iter().collect::<Vec<_>>().join(" ")
            )
        });
        let resp = rb
            .send()
            .await
            .map_err(|source| RegistryError::TokenTransport {
                op: op.clone().into(),
                realm: shown.clone(),
                attempts: 1,
                source: scrub(source),
            })?;
        let status = resp.status();
        let content_type = content_type(&resp);
        let body = read_small_body(resp).await;
        if !status.is_success() {
            return Err(RegistryError::TokenStatus {
                op: op.clone().into(),
                realm: shown,
                status,
                details: ErrorDetails::from_body(content_type.as_deref(), &body),
                hint: matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN)
                    .then(|| self.auth_hint(ep.registry, status)),
                attempts: 1,
            });
        }
        serde_json::from_slice::<TokenResponse>(&body)
            .ok()
            .and_then(|t| t.into_token(creds.is_some()))
            .ok_or(RegistryError::TokenMissing {
                op: op.clone().into(),
                realm: shown,
            })
    }

    /// Send once, choosing the scheme for a registry path on first contact with the host.
    async fn send(
        &self,
        ep: Endpoint<'_>,
        op: &Operation,
        spec: &RequestSpec,
        auth: Option<&Authorization>,
    ) -> Result<Response, RegistryError> {
        let path = match &spec.target {
            Target::Url(url) => {
                let host = url_host_port(url).unwrap_or_default();
                let client = self.client(
                    &host,
                    scheme_policy(&host, &self.insecure_registries),
                    spec.body.is_file(),
                )?;
                // Credentials go only to the registry itself, never to another host it names.
                let same_host = host.eq_ignore_ascii_case(ep.host);
                let auth = auth.filter(|_| same_host);
                return self
                    .send_to(&client, url.clone(), op, spec, auth)
                    .await
                    .map_err(|e| self.send_error(ep, op, e));
            }
            Target::Path(p) => p,
        };
        let known = self
            .schemes
            .lock()
            .expect("scheme map lock")
            .get(ep.host)
            .copied();
        let policy = scheme_policy(ep.host, &self.insecure_registries);
        let client = self.client(ep.host, policy, spec.body.is_file())?;
        if let Some(scheme) = known {
            let url = self.url(scheme, ep.host, path, op)?;
            let sent = self.send_to(&client, url, op, spec, auth).await;
            // A scheme remembered from an earlier build that no longer connects (the registry
            // moved to HTTPS, say): forget it and find out again.
            let stale = matches!(&sent, Err(SendError::Http(e)) if e.is_connect())
                && self
                    .seeded_schemes
                    .lock()
                    .expect("scheme map lock")
                    .remove(ep.host);
            if !stale {
                return sent.map_err(|e| self.send_error(ep, op, e));
            }
            self.schemes
                .lock()
                .expect("scheme map lock")
                .remove(ep.host);
        }
        let https = self.url(Scheme::Https, ep.host, path, op)?;
        let first = self.send_to(&client, https, op, spec, auth).await;
        let chosen = match first {
            Ok(resp) => Ok((Scheme::Https, resp)),
            Err(SendError::Http(e)) if should_fall_back(policy, e.is_connect()) => {
                let http = self.url(Scheme::Http, ep.host, path, op)?;
                self.send_to(&client, http, op, spec, auth)
                    .await
                    .map(|resp| (Scheme::Http, resp))
            }
            Err(e) => Err(e),
        };
        let (scheme, resp) = chosen.map_err(|e| self.send_error(ep, op, e))?;
        self.schemes
            .lock()
            .expect("scheme map lock")
            .insert(ep.host.to_string(), scheme);
        Ok(resp)
    }

    /// The client for a host and its policy (the host's certs.d CAs count); streamed uploads get
    /// one without a read timeout.
    fn client(
        &self,
        host: &str,
        policy: SchemePolicy,
        upload: bool,
    ) -> Result<reqwest::Client, RegistryError> {
        self.clients_for(host)?
            .get(policy == SchemePolicy::HttpsOnly, upload)
    }

    fn url(
        &self,
        scheme: Scheme,
        host: &str,
        path: &str,
        op: &Operation,
    ) -> Result<Url, RegistryError> {
        Url::parse(&format!("{}://{host}{path}", scheme.as_str())).map_err(|e| {
            RegistryError::InvalidArgument {
                op: op.clone().into(),
                problem: format!("cannot form a URL for host {host:?}: {e}"),
            }
        })
    }

    fn send_error(&self, ep: Endpoint<'_>, op: &Operation, e: SendError) -> RegistryError {
        match e {
            SendError::Http(source) if super::tls::is_certificate_error(&source) => {
                RegistryError::Certificate {
                    op: op.clone().into(),
                    host: ep.host.to_string(),
                    source: scrub(source),
                }
            }
            SendError::Http(source) if source.is_connect() => RegistryError::Connect {
                op: op.clone().into(),
                host: ep.host.to_string(),
                attempts: 1,
                source: scrub(source),
            },
            SendError::Http(source) => RegistryError::Transport {
                op: op.clone().into(),
                host: ep.host.to_string(),
                attempts: 1,
                source: scrub(source),
            },
            SendError::Other(e) => e,
        }
    }

    /// Send once to `url`; with `-v`, one line for the request and its outcome.
    async fn send_to(
        &self,
        client: &reqwest::Client,
        url: Url,
        op: &Operation,
        spec: &RequestSpec,
        auth: Option<&Authorization>,
    ) -> Result<Response, SendError> {
        if self.trace.is_none() {
            return self.send_to_once(client, url, op, spec, auth).await;
        }
        let how = match auth {
            None => "anonymous",
            Some(Authorization::Basic(_)) => "basic auth",
            Some(Authorization::Bearer(_)) => "bearer token",
        };
        let line = format!(
            "{} {}://{}{}{} ({how})",
            spec.method,
            url.scheme(),
            url_host_port(&url).unwrap_or_default(),
            url.path(),
            shown_query(&url)
        );
        let result = self.send_to_once(client, url, op, spec, auth).await;
        self.trace(|| match &result {
            Ok(resp) => format!("{line} -> {}", resp.status()),
            Err(SendError::Http(e)) if e.is_connect() => format!("{line} -> cannot connect"),
            Err(_) => format!("{line} -> failed"),
        });
        result
    }

    async fn send_to_once(
        &self,
        client: &reqwest::Client,
        url: Url,
        op: &Operation,
        spec: &RequestSpec,
        auth: Option<&Authorization>,
    ) -> Result<Response, SendError> {
        if let Some(a) = auth
            && a.is_secret()
            && !may_send_secret(&url)
        {
            return Err(SendError::Other(RegistryError::InsecureCredentials {
                op: op.clone().into(),
                host: url_host_port(&url).unwrap_or_default(),
            }));
        }
        let host = url_host_port(&url).unwrap_or_default();
        let mut rb = client
            .request(spec.method.clone(), url)
            .headers(spec.headers.clone());
        if let Some(a) = auth {
            rb = rb.header(header::AUTHORIZATION, a.header());
        }
        let (path, size) = match &spec.body {
            Body::None => return rb.send().await.map_err(SendError::Http),
            Body::Bytes(b) => return rb.body(b.clone()).send().await.map_err(SendError::Http),
            Body::File { path, size } => (path, *size),
        };
        let file = tokio::fs::File::open(path).await.map_err(|source| {
            SendError::Other(RegistryError::ReadFile {
                op: op.clone().into(),
                path: path.clone(),
                source,
            })
        })?;
        // (bytes handed to the connection, when the last were): the watchdog below reads it.
        let progress = Arc::new(Mutex::new((0u64, Instant::now())));
        let tracker = progress.clone();
        let stream =
            tokio_util::io::ReaderStream::with_capacity(file, UPLOAD_CHUNK).inspect(move |chunk| {
                if let Ok(c) = chunk {
                    let mut p = tracker.lock().expect("upload progress lock");
                    *p = (p.0 + c.len() as u64, Instant::now());
                }
            });
        let send = rb
            .header(header::CONTENT_LENGTH, size)
            .body(reqwest::Body::wrap_stream(stream))
            .send();
        tokio::pin!(send);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                r = &mut send => return r.map_err(SendError::Http),
                _ = tick.tick() => {
                    let (sent, last) = *progress.lock().expect("upload progress lock");
                    let limit = if sent < size { STALL_TIMEOUT } else { COMMIT_TIMEOUT };
                    if last.elapsed() > limit {
                        return Err(SendError::Other(RegistryError::Stalled {
                            op: op.clone().into(),
                            host,
                            waited: limit,
                            attempts: 1,
                        }));
                    }
                }
            }
        }
    }

    /// The error for an unexpected response, with the registry's explanation and, for 401/403,
    /// what to check.
    pub(crate) async fn error_from_response(
        &self,
        ep: Endpoint<'_>,
        op: &Operation,
        resp: Response,
    ) -> RegistryError {
        let status = resp.status();
        let content_type = content_type(&resp);
        let retry_after = super::retry::retry_after(resp.headers());
        let body = read_small_body(resp).await;
        RegistryError::Status {
            op: op.clone().into(),
            status,
            details: ErrorDetails::from_body(content_type.as_deref(), &body),
            hint: matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN)
                .then(|| self.auth_hint(ep.registry, status)),
            retry_after,
            attempts: 1,
        }
    }

    /// What to check after an authentication failure. Names files and hosts, never secrets.
    fn auth_hint(&self, registry: &str, status: StatusCode) -> String {
        let hint = self.config.auth_hint(registry);
        match artifact_registry_hint(registry, status) {
            Some(ar) => format!("{ar}; {hint}"),
            None => hint,
        }
    }
}

/// Artifact Registry answers 403 both for a missing permission and for a repository that does not
/// exist ("…or it may not exist"): say how to fix either.
pub(crate) fn artifact_registry_hint(registry: &str, status: StatusCode) -> Option<String> {
    let host = registry.split(':').next().unwrap_or(registry);
    (status == StatusCode::FORBIDDEN && host.ends_with("-docker.pkg.dev")).then(|| {
        let location = host.trim_end_matches("-docker.pkg.dev");
        format!(
            "Artifact Registry refuses this when the repository does not exist or the account may not write to it: \
             create it (gcloud artifacts repositories create REPO --repository-format=docker --location={location}) \
             or grant the account artifactregistry.repositories.uploadArtifacts (roles/artifactregistry.writer)"
        )
    })
}

#[cfg(test)]
mod artifact_registry_tests {
    use super::*;

    #[test]
    fn forbidden_on_artifact_registry_says_create_or_grant() {
        let h =
            artifact_registry_hint("us-central1-docker.pkg.dev", StatusCode::FORBIDDEN).unwrap();
        assert!(
            h.contains("--location=us-central1")
                && h.contains("artifactregistry.repositories.uploadArtifacts"),
            "{h}"
        );
        assert!(
            artifact_registry_hint("us-central1-docker.pkg.dev", StatusCode::UNAUTHORIZED)
                .is_none()
        );
        assert!(artifact_registry_hint("registry.example.com", StatusCode::FORBIDDEN).is_none());
    }
}

/// A URL's query for `-v`: the values of `mount`, `from` and `digest` (digests and repository
/// names), every other value elided — upload locations carry state and signatures there.
fn shown_query(url: &Url) -> String {
    let parts: Vec<String> = url
        .query_pairs()
        .map(|(k, v)| match k.as_ref() {
            "mount" | "from" | "digest" => format!("{k}={v}"),
            _ => format!("{k}=…"),
        })
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

/// reqwest errors print their URL; an upload or storage URL may carry a signature in its query,
/// so such URLs are dropped from errors we keep (the operation already names the subject).
pub(crate) fn scrub(e: reqwest::Error) -> reqwest::Error {
    if e.url().is_some_and(|u| u.query().is_some()) {
        e.without_url()
    } else {
        e
    }
}

pub(crate) fn content_type(resp: &Response) -> Option<String> {
    resp.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// Up to [`MAX_SMALL_BODY`] bytes of a body; what could not be read is left out.
pub(crate) async fn read_small_body(mut resp: Response) -> Vec<u8> {
    let mut out = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        let room = MAX_SMALL_BODY - out.len();
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if out.len() >= MAX_SMALL_BODY {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_listed_hosts_may_fall_back_to_http() {
        let insecure = vec![normalize_host_entry("http://Reg.Internal:5000/")];
        assert_eq!(insecure, ["reg.internal:5000"]);
        assert_eq!(
            scheme_policy("reg.internal:5000", &insecure),
            SchemePolicy::HttpsThenHttp
        );
        assert_eq!(
            scheme_policy("REG.internal:5000", &insecure),
            SchemePolicy::HttpsThenHttp
        );
        // A listed host:port does not cover other ports.
        assert_eq!(
            scheme_policy("reg.internal:5001", &insecure),
            SchemePolicy::HttpsOnly
        );
        for h in ["localhost:5000", "127.0.0.1:5000", "127.9.9.9", "[::1]:443"] {
            assert_eq!(scheme_policy(h, &[]), SchemePolicy::HttpsThenHttp, "{h}");
        }
        for h in [
            "registry-1.docker.io",
            "us-central1-docker.pkg.dev",
            "10.0.0.1:5000",
        ] {
            assert_eq!(scheme_policy(h, &[]), SchemePolicy::HttpsOnly, "{h}");
        }
    }

    #[test]
    fn fallback_only_without_an_http_exchange() {
        assert!(should_fall_back(SchemePolicy::HttpsThenHttp, true));
        assert!(!should_fall_back(SchemePolicy::HttpsThenHttp, false));
        assert!(!should_fall_back(SchemePolicy::HttpsOnly, true));
        assert!(!should_fall_back(SchemePolicy::HttpsOnly, false));
    }

    #[test]
    fn secrets_only_over_https_or_to_loopback() {
        let ok = |u: &str| may_send_secret(&Url::parse(u).unwrap());
        assert!(ok("https://reg.example/v2/"));
        assert!(ok("http://127.0.0.1:5000/v2/"));
        assert!(ok("http://localhost:5000/v2/"));
        assert!(ok("http://[::1]:5000/v2/"));
        assert!(!ok("http://reg.example/v2/"));
        assert!(!ok("http://10.0.0.1:5000/v2/"));
    }

    #[test]
    fn upload_locations_relative_and_absolute() {
        let req = Url::parse("http://127.0.0.1:5000/v2/a/b/blobs/uploads/").unwrap();
        assert_eq!(
            resolve_location(&req, "/v2/a/b/blobs/uploads/u1?_state=x").unwrap(),
            Url::parse("http://127.0.0.1:5000/v2/a/b/blobs/uploads/u1?_state=x").unwrap()
        );
        assert_eq!(
            resolve_location(&req, "u2").unwrap().as_str(),
            "http://127.0.0.1:5000/v2/a/b/blobs/uploads/u2"
        );
        assert_eq!(
            resolve_location(&req, "https://storage.example/up?sig=1")
                .unwrap()
                .as_str(),
            "https://storage.example/up?sig=1"
        );
    }

    #[test]
    fn shown_query_keeps_digests_and_hides_state() {
        let u = Url::parse(
            "http://h/v2/a/blobs/uploads/?mount=sha256:ab&from=library/python&_state=SECRET",
        )
        .unwrap();
        assert_eq!(
            shown_query(&u),
            "?mount=sha256:ab&from=library/python&_state=…"
        );
        assert_eq!(shown_query(&Url::parse("http://h/v2/").unwrap()), "");
    }

    #[test]
    fn url_host_port_matches_reference_spelling() {
        let h = |u: &str| url_host_port(&Url::parse(u).unwrap()).unwrap();
        assert_eq!(h("http://127.0.0.1:5000/x"), "127.0.0.1:5000");
        assert_eq!(h("https://reg.example/x"), "reg.example");
        assert_eq!(h("http://[::1]:5000/x"), "[::1]:5000");
    }
}
