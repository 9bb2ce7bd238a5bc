//! Registry authentication: `WWW-Authenticate` challenges, credentials (Docker's config.json and
//! its credential helpers, containers' auth.json), and bearer tokens. No type here prints a secret through `Debug` or `Display`.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::header::HeaderValue;

use super::error::RegistryError;

// ---------------------------------------------------------------------------------------------
// Challenges (RFC 7235 §2.1, §4.1)
// ---------------------------------------------------------------------------------------------

/// One challenge from a `WWW-Authenticate` header: a scheme (lowercased) and its parameters
/// (names lowercased, values unquoted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub scheme: String,
    pub params: BTreeMap<String, String>,
}

impl Challenge {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }

    pub fn is_bearer(&self) -> bool {
        self.scheme == "bearer"
    }

    pub fn is_basic(&self) -> bool {
        self.scheme == "basic"
    }
}

/// Parse a `WWW-Authenticate` value, which may hold several challenges:
/// `Basic realm="x", Bearer realm="https://auth/token",service="reg",scope="repository:a:pull,push"`.
/// Quoted values may contain commas, `=` and backslash escapes. Returns `None` on malformed input.
pub fn parse_challenges(header: &str) -> Option<Vec<Challenge>> {
    let mut p = Parser {
        s: header.as_bytes(),
        i: 0,
    };
    let mut out = Vec::new();
    loop {
        p.skip_list_separators();
        if p.eof() {
            break;
        }
        let scheme = p.token()?;
        let mut ch = Challenge {
            scheme: scheme.to_ascii_lowercase(),
            params: BTreeMap::new(),
        };
        let mut first = true;
        loop {
            p.skip_ws();
            if p.eof() {
                break;
            }
            if p.peek() == Some(b',') {
                p.i += 1;
                first = false;
                continue;
            }
            let save = p.i;
            let Some(name) = p.token() else {
                // Not a token: a token68 value ("abc+/=="), allowed only right after the scheme.
                if first && p.token68().is_some() {
                    first = false;
                    continue;
                }
                return None;
            };
            p.skip_ws();
            if p.peek() == Some(b'=') {
                p.i += 1;
                p.skip_ws();
                match p.peek() {
                    Some(b'"') => {
                        let v = p.quoted()?;
                        ch.params.insert(name.to_ascii_lowercase(), v);
                    }
                    // `abc=` then `=`, `,` or the end: a token68 with '=' padding.
                    None | Some(b'=') | Some(b',') if first => {
                        p.i = save;
                        p.token68()?;
                    }
                    _ => {
                        let v = p.token()?;
                        ch.params.insert(name.to_ascii_lowercase(), v.to_string());
                    }
                }
                first = false;
            } else {
                // A token not followed by '=': right after the scheme it may be a token68
                // (`Negotiate abc`); otherwise it is the scheme of the next challenge.
                p.i = save;
                if first && p.token68().is_some() {
                    first = false;
                    continue;
                }
                p.i = save;
                break;
            }
        }
        out.push(ch);
    }
    Some(out)
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Parser<'a> {
    fn eof(&self) -> bool {
        self.i >= self.s.len()
    }
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.i += 1;
        }
    }
    fn skip_list_separators(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b',')) {
            self.i += 1;
        }
    }
    fn token(&mut self) -> Option<&'a str> {
        let start = self.i;
        while self.peek().is_some_and(is_tchar) {
            self.i += 1;
        }
        (self.i > start).then(|| std::str::from_utf8(&self.s[start..self.i]).expect("ascii"))
    }
    fn token68(&mut self) -> Option<()> {
        let start = self.i;
        while self
            .peek()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
        {
            self.i += 1;
        }
        if self.i == start {
            return None;
        }
        while self.peek() == Some(b'=') {
            self.i += 1;
        }
        self.skip_ws();
        (self.eof() || self.peek() == Some(b',')).then_some(())
    }
    fn quoted(&mut self) -> Option<String> {
        debug_assert_eq!(self.peek(), Some(b'"'));
        self.i += 1;
        let mut out = Vec::new();
        loop {
            match self.peek()? {
                b'"' => {
                    self.i += 1;
                    return String::from_utf8(out).ok();
                }
                b'\\' => {
                    self.i += 1;
                    out.push(self.peek()?);
                    self.i += 1;
                }
                b => {
                    out.push(b);
                    self.i += 1;
                }
            }
        }
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

// ---------------------------------------------------------------------------------------------
// Credentials
// ---------------------------------------------------------------------------------------------

/// A username and password (or token used as a password). `Debug` hides the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    password: String,
}

impl Credentials {
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        Credentials {
            username: username.into(),
            password: password.into(),
        }
    }

    pub fn password(&self) -> &str {
        &self.password
    }

    /// The OAuth2 refresh token, when these credentials are one (username `<token>`, as
    /// credential helpers and config.json's `identitytoken` give it). The distribution token
    /// protocol exchanges it with a POST (`grant_type=refresh_token`), not Basic auth.
    pub fn identity_token(&self) -> Option<&str> {
        (self.username == IDENTITY_TOKEN_USER).then_some(self.password.as_str())
    }

    /// `Basic base64(user:password)`, marked sensitive so it is never logged by the HTTP stack.
    pub(crate) fn basic_header(&self) -> HeaderValue {
        let raw = format!("{}:{}", self.username, self.password);
        let encoded = base64::engine::general_purpose::STANDARD.encode(raw);
        let mut v = HeaderValue::from_str(&format!("Basic {encoded}"))
            .expect("base64 is a valid header value");
        v.set_sensitive(true);
        v
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Where credentials came from, for messages (never the credentials themselves).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialSource {
    /// `docker-credential-NAME`, named by `credHelpers` (per registry) or `credsStore` (default)
    /// in the Docker config file.
    Helper {
        name: String,
        per_registry: bool,
        config: Option<PathBuf>,
    },
    /// An `auths` entry of Docker's config.json.
    DockerConfig(PathBuf),
    /// An `auths` entry of containers' auth.json (`REGISTRY_AUTH_FILE`, podman, skopeo).
    AuthFile(PathBuf),
    /// A Google access token (Artifact Registry, Container Registry), described by its source.
    Google(String),
}

impl fmt::Display for CredentialSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CredentialSource::Helper {
                name,
                per_registry,
                config,
            } => {
                let key = if *per_registry {
                    "credHelpers"
                } else {
                    "credsStore"
                };
                write!(f, "credential helper docker-credential-{name} ({key}")?;
                if let Some(p) = config {
                    write!(f, " in {}", p.display())?;
                }
                f.write_str(")")
            }
            CredentialSource::DockerConfig(p) | CredentialSource::AuthFile(p) => {
                write!(f, "{}", p.display())
            }
            CredentialSource::Google(source) => f.write_str(source),
        }
    }
}

/// A credential helper that could not answer. Names the helper and the registry; its text never
/// holds what the helper printed on stdout (that may be a secret).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("credential helper docker-credential-{helper} failed for {registry}: {problem}")]
pub struct HelperError {
    pub helper: String,
    pub registry: String,
    pub problem: String,
}

/// What one registry resolved to, once per process.
#[derive(Debug)]
enum Resolution {
    Found {
        creds: Credentials,
        source: CredentialSource,
    },
    Failed(HelperError),
    /// No source had credentials; for Google registries, what each Google source said.
    Nothing(Vec<String>),
}

/// Runs `docker-credential-NAME get` for a server URL: `Ok(None)` when the helper has nothing
/// for it. A field so unit tests can stand in for the subprocess.
type HelperRunner =
    Arc<dyn Fn(&str, &str) -> Result<Option<Credentials>, String> + Send + Sync + 'static>;

/// Credentials as docker and go-containerregistry find them, first match wins:
/// 1. `credHelpers[registry]` in Docker's config.json, then `credsStore`: `docker-credential-NAME
///    get` with the server URL on stdin (a helper with nothing for the registry passes);
/// 2. `auths[registry]` in config.json (`auth` = base64 `USER:PASSWORD`, or `identitytoken`);
/// 3. `auths[registry]` in containers' auth.json: `$REGISTRY_AUTH_FILE`, else
///    `$XDG_RUNTIME_DIR/containers/auth.json` then `~/.config/containers/auth.json`;
/// 4. for Google registries, an access token from [`super::google`].
///
/// Keys are normalized ([`normalize_registry_key`]). Each registry is resolved once and the
/// answer kept for the life of the process. A helper that fails gives no credentials; the
/// transport stops on it ([`DockerConfig::helper_error`]) and [`DockerConfig::auth_hint`] says why.
#[derive(Clone)]
pub struct DockerConfig {
    /// The file they came from (for messages); `None` when there was no file.
    pub path: Option<PathBuf>,
    entries: BTreeMap<String, Credentials>,
    helpers: BTreeMap<String, String>,
    creds_store: Option<String>,
    /// containers' auth.json files that exist, in the order they are consulted.
    auth_files: Vec<AuthFile>,
    runner: Option<HelperRunner>,
    /// Whether Google registries may get a Google access token (off in unit tests).
    google: bool,
    /// Answers are leaked so `lookup` can lend them out: one small value per registry a process
    /// talks to, kept until it exits, like the cache they form.
    resolved: Arc<Mutex<HashMap<String, &'static Resolution>>>,
}

impl Default for DockerConfig {
    fn default() -> Self {
        DockerConfig {
            path: None,
            entries: BTreeMap::new(),
            helpers: BTreeMap::new(),
            creds_store: None,
            auth_files: Vec::new(),
            runner: None,
            google: true,
            resolved: Arc::default(),
        }
    }
}

#[derive(Clone)]
struct AuthFile {
    path: PathBuf,
    entries: BTreeMap<String, Credentials>,
}

impl fmt::Debug for DockerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DockerConfig")
            .field("path", &self.path)
            .field("registries", &self.entries.keys().collect::<Vec<_>>())
            .field("helpers", &self.helpers)
            .field("creds_store", &self.creds_store)
            .field(
                "auth_files",
                &self.auth_files.iter().map(|a| &a.path).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

#[derive(serde::Deserialize, Default)]
struct ConfigFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
}

// No Debug: it holds secrets.
#[derive(serde::Deserialize, Default)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

/// What a credential helper prints for `get`. No Debug: it holds a secret.
#[derive(serde::Deserialize)]
struct HelperAnswer {
    #[serde(default, rename = "Username")]
    username: String,
    #[serde(rename = "Secret")]
    secret: String,
}

/// How long a credential helper may take to answer.
const HELPER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The username with which helpers and config files mark the secret as an identity token.
pub const IDENTITY_TOKEN_USER: &str = "<token>";

impl DockerConfig {
    /// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
    pub fn default_path() -> Option<PathBuf> {
        if let Some(dir) = std::env::var_os("DOCKER_CONFIG").filter(|v| !v.is_empty()) {
            return Some(PathBuf::from(dir).join("config.json"));
        }
        std::env::var_os("HOME")
            .filter(|v| !v.is_empty())
            .map(|h| PathBuf::from(h).join(".docker/config.json"))
    }

    /// containers' auth.json candidates: `$REGISTRY_AUTH_FILE` alone when set, else
    /// `$XDG_RUNTIME_DIR/containers/auth.json` and `~/.config/containers/auth.json`.
    pub fn default_auth_files() -> Vec<PathBuf> {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        if let Some(file) = var("REGISTRY_AUTH_FILE") {
            return vec![PathBuf::from(file)];
        }
        let mut out = Vec::new();
        if let Some(dir) = var("XDG_RUNTIME_DIR") {
            out.push(PathBuf::from(dir).join("containers/auth.json"));
        }
        if let Some(home) = var("HOME") {
            out.push(PathBuf::from(home).join(".config/containers/auth.json"));
        }
        out
    }

    /// Load `path`, and the auth.json files of [`DockerConfig::default_auth_files`] as fallbacks.
    /// A missing file is no credentials, a malformed one is an error naming the file.
    pub fn load(path: &Path) -> Result<DockerConfig, RegistryError> {
        Self::load_with_auth_files(path, &Self::default_auth_files())
    }

    /// Load `path` with these auth.json fallbacks (consulted in order).
    pub fn load_with_auth_files(
        path: &Path,
        auth_files: &[PathBuf],
    ) -> Result<DockerConfig, RegistryError> {
        let mut config = match read_if_exists(path)? {
            Some(bytes) => Self::from_json(&bytes, path)?,
            None => DockerConfig::default(),
        };
        for file in auth_files {
            if let Some(bytes) = read_if_exists(file)? {
                let parsed = Self::from_json(&bytes, file)?;
                config.auth_files.push(AuthFile {
                    path: file.clone(),
                    entries: parsed.entries,
                });
            }
        }
        Ok(config)
    }

    fn from_json(bytes: &[u8], path: &Path) -> Result<DockerConfig, RegistryError> {
        let file: ConfigFile =
            serde_json::from_slice(bytes).map_err(|source| RegistryError::DockerConfigFormat {
                path: path.to_path_buf(),
                source,
            })?;
        let mut entries = BTreeMap::new();
        for (key, entry) in file.auths {
            let bad = || {
                // Name the entry, never its value.
                RegistryError::DockerConfig {
                    path: path.to_path_buf(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!(
                            "the \"auth\" of the entry for {key:?} is not base64 of USER:PASSWORD"
                        ),
                    ),
                }
            };
            let creds = match (
                entry.identitytoken.filter(|t| !t.is_empty()),
                entry.auth.filter(|a| !a.is_empty()),
                entry.username,
            ) {
                (Some(token), auth, _) => {
                    // docker sends the token, not the password; a bad `auth` is still an error.
                    if let Some(auth) = auth {
                        decode_auth(&auth).ok_or_else(bad)?;
                    }
                    Credentials::new(IDENTITY_TOKEN_USER, token)
                }
                (None, Some(auth), _) => decode_auth(&auth).ok_or_else(bad)?,
                (None, None, Some(user)) if !user.is_empty() => {
                    Credentials::new(user, entry.password.unwrap_or_default())
                }
                // `{}`: the secret lives in a credential store.
                _ => continue,
            };
            entries.insert(normalize_registry_key(&key), creds);
        }
        Ok(DockerConfig {
            path: Some(path.to_path_buf()),
            entries,
            helpers: file
                .cred_helpers
                .into_iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(k, v)| (normalize_registry_key(&k), v))
                .collect(),
            creds_store: file.creds_store.filter(|s| !s.is_empty()),
            ..DockerConfig::default()
        })
    }

    /// Credentials for a registry as written in a reference (`docker.io`, `host:port`), from the
    /// first source that has some (see [`DockerConfig`]). Runs a credential helper the first time
    /// a registry is asked for; later calls answer from the cache.
    pub fn lookup(&self, registry: &str) -> Option<&Credentials> {
        match self.resolve(registry) {
            Resolution::Found { creds, .. } => Some(creds),
            Resolution::Failed(_) | Resolution::Nothing(_) => None,
        }
    }

    /// Where [`DockerConfig::lookup`]'s credentials for `registry` came from.
    pub fn source(&self, registry: &str) -> Option<&CredentialSource> {
        match self.resolve(registry) {
            Resolution::Found { source, .. } => Some(source),
            Resolution::Failed(_) | Resolution::Nothing(_) => None,
        }
    }

    /// The credential helper that failed for `registry`, if one did.
    pub fn helper_error(&self, registry: &str) -> Option<&HelperError> {
        match self.resolve(registry) {
            Resolution::Failed(e) => Some(e),
            Resolution::Found { .. } | Resolution::Nothing(_) => None,
        }
    }

    /// The credential helper docker would use for this registry (`credHelpers`, else `credsStore`).
    pub fn helper_for(&self, registry: &str) -> Option<&str> {
        self.helpers
            .get(&normalize_registry_key(registry))
            .or(self.creds_store.as_ref())
            .map(String::as_str)
    }

    /// What to check after an authentication failure at `registry`: the source of the
    /// credentials that were refused, the helper that failed, or the files that had none.
    /// Names files, helpers and hosts, never secrets.
    pub fn auth_hint(&self, registry: &str) -> String {
        match self.resolve(registry) {
            Resolution::Found { source, .. } => {
                let from = match source {
                    CredentialSource::Helper { .. } | CredentialSource::Google(_) => "from",
                    CredentialSource::DockerConfig(_) | CredentialSource::AuthFile(_) => "in",
                };
                format!("check the credentials for {registry} {from} {source}")
            }
            Resolution::Failed(e) => e.to_string(),
            Resolution::Nothing(google) => {
                let mut files: Vec<String> = self
                    .path
                    .iter()
                    .chain(self.auth_files.iter().map(|a| &a.path))
                    .map(|p| p.display().to_string())
                    .collect();
                if files.is_empty() {
                    files.push("the Docker config file (none found)".into());
                }
                let mut hint = format!("no credentials for {registry} in {}", files.join(" or "));
                for g in google {
                    hint.push_str("; ");
                    hint.push_str(g);
                }
                hint
            }
        }
    }

    fn resolve(&self, registry: &str) -> &Resolution {
        let key = normalize_registry_key(registry);
        // Held while a helper runs, so each registry's helper runs once.
        let mut cache = self.resolved.lock().expect("credential cache lock");
        if let Some(r) = cache.get(&key) {
            return r;
        }
        let r: &'static Resolution = Box::leak(Box::new(self.resolve_uncached(&key)));
        cache.insert(key, r);
        r
    }

    fn resolve_uncached(&self, key: &str) -> Resolution {
        let helpers = self
            .helpers
            .get(key)
            .map(|h| (h, true))
            .into_iter()
            .chain(self.creds_store.as_ref().map(|h| (h, false)));
        for (helper, per_registry) in helpers {
            match self.run_helper(helper, key) {
                Ok(Some(creds)) => {
                    return Resolution::Found {
                        creds,
                        source: CredentialSource::Helper {
                            name: helper.clone(),
                            per_registry,
                            config: self.path.clone(),
                        },
                    };
                }
                Ok(None) => {}
                Err(problem) => {
                    return Resolution::Failed(HelperError {
                        helper: helper.clone(),
                        registry: key.to_string(),
                        problem,
                    });
                }
            }
        }
        if let (Some(creds), Some(path)) = (self.entries.get(key), &self.path) {
            return Resolution::Found {
                creds: creds.clone(),
                source: CredentialSource::DockerConfig(path.clone()),
            };
        }
        for file in &self.auth_files {
            if let Some(creds) = file.entries.get(key) {
                return Resolution::Found {
                    creds: creds.clone(),
                    source: CredentialSource::AuthFile(file.path.clone()),
                };
            }
        }
        if self.google && super::google::is_google_registry(key) {
            return match block_on(super::google::access_token()) {
                Ok(t) => Resolution::Found {
                    creds: Credentials::new(super::google::ACCESS_TOKEN_USER, t.token),
                    source: CredentialSource::Google(t.source),
                },
                Err(problems) => Resolution::Nothing(problems),
            };
        }
        Resolution::Nothing(Vec::new())
    }

    fn run_helper(&self, helper: &str, key: &str) -> Result<Option<Credentials>, String> {
        let url = helper_server_url(key);
        match &self.runner {
            Some(run) => run(helper, &url),
            None => {
                // A short subprocess, once per registry: keep it off the async workers.
                let run = || run_credential_helper(helper, &url);
                match tokio::runtime::Handle::try_current() {
                    Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                        tokio::task::block_in_place(run)
                    }
                    _ => run(),
                }
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn from_str_for_test(json: &str) -> Result<DockerConfig, RegistryError> {
        Self::from_json(json.as_bytes(), Path::new("config.json"))
    }

    #[cfg(test)]
    fn with_runner(
        mut self,
        run: impl Fn(&str, &str) -> Result<Option<Credentials>, String> + Send + Sync + 'static,
    ) -> Self {
        self.runner = Some(Arc::new(run));
        self
    }
}

/// Run `f` to completion from synchronous code: on the current multi-threaded runtime without
/// stalling its other tasks, else on a runtime of its own.
fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(|| h.block_on(f))
        }
        _ => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime")
            .block_on(f),
    }
}

fn read_if_exists(path: &Path) -> Result<Option<Vec<u8>>, RegistryError> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(RegistryError::DockerConfig {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// The server URL docker gives a helper: Docker Hub's legacy index URL, else the host.
fn helper_server_url(key: &str) -> String {
    if key == "docker.io" {
        "https://index.docker.io/v1/".to_string()
    } else {
        key.to_string()
    }
}

/// `docker-credential-NAME get`, `url` on stdin. `Ok(None)` when the helper has no credentials
/// for it ("credentials not found", docker's convention). Errors never quote stdout.
fn run_credential_helper(helper: &str, url: &str) -> Result<Option<Credentials>, String> {
    run_helper_program(&format!("docker-credential-{helper}"), url, HELPER_TIMEOUT)
}

fn run_helper_program(
    program: &str,
    url: &str,
    timeout: std::time::Duration,
) -> Result<Option<Credentials>, String> {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let mut child = Command::new(program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => format!("{program} is not on PATH"),
            _ => format!("could not start {program}: {e}"),
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that exits without reading stdin is judged by its exit status below.
        let _ = stdin.write_all(url.as_bytes());
    }
    // A helper waiting for a prompt nobody answers (a locked keychain in CI) must not hang the
    // build: its answer is a few hundred bytes, so polling cannot fill its pipes.
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{program} gave no answer within {} s",
                    timeout.as_secs_f32()
                ));
            }
            Err(e) => return Err(format!("could not wait for {program}: {e}")),
        }
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("could not wait for {program}: {e}"))?;
    parse_helper_output(out.status, &out.stdout, &out.stderr)
}

fn parse_helper_output(
    status: std::process::ExitStatus,
    stdout: &[u8],
    stderr: &[u8],
) -> Result<Option<Credentials>, String> {
    if !status.success() {
        let said = |b: &[u8]| String::from_utf8_lossy(b).trim().to_string();
        let (out, err) = (said(stdout), said(stderr));
        if out.contains("credentials not found") || err.contains("credentials not found") {
            return Ok(None);
        }
        // Helpers write their error to stdout; quote it only when it is plainly not JSON.
        let message = if !err.is_empty() {
            err
        } else if !out.starts_with('{') {
            out
        } else {
            String::new()
        };
        let message: String = message
            .lines()
            .next()
            .unwrap_or("")
            .chars()
            .take(200)
            .collect();
        return Err(if message.is_empty() {
            format!("it exited with {status}")
        } else {
            format!("it exited with {status}: {message}")
        });
    }
    let answer: HelperAnswer = serde_json::from_slice(stdout).map_err(|_| {
        "its output is not the JSON object {\"ServerURL\", \"Username\", \"Secret\"}".to_string()
    })?;
    if answer.username.is_empty() && answer.secret.is_empty() {
        return Ok(None);
    }
    Ok(Some(Credentials::new(answer.username, answer.secret)))
}

/// `base64("user:password")` → credentials.
fn decode_auth(auth: &str) -> Option<Credentials> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(auth.trim())
        .ok()?;
    let raw = String::from_utf8(raw).ok()?;
    let (user, pass) = raw.split_once(':')?;
    Some(Credentials::new(user, pass.trim_end_matches('\0')))
}

/// A config.json key or registry name as a lookup key: scheme and path dropped, lowercased, and
/// Docker Hub's aliases (`https://index.docker.io/v1/`, `registry-1.docker.io`) made `docker.io`.
pub fn normalize_registry_key(key: &str) -> String {
    let k = key.trim();
    let k = k
        .strip_prefix("https://")
        .or_else(|| k.strip_prefix("http://"))
        .unwrap_or(k);
    let host = k.split('/').next().unwrap_or(k).to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" => "docker.io".to_string(),
        _ => host,
    }
}

// ---------------------------------------------------------------------------------------------
// Tokens and what goes in the Authorization header
// ---------------------------------------------------------------------------------------------

/// A bearer token from a token server. `Debug` hides the value.
#[derive(Clone)]
pub struct Token {
    value: String,
    expires_at: Instant,
    /// Obtained with credentials: then it is itself a credential.
    pub with_credentials: bool,
}

impl Token {
    pub fn new(value: String, lifetime: Duration, with_credentials: bool) -> Self {
        Token {
            value,
            expires_at: Instant::now() + lifetime,
            with_credentials,
        }
    }

    pub fn is_fresh(&self) -> bool {
        Instant::now() < self.expires_at
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("value", &"<redacted>")
            .field("with_credentials", &self.with_credentials)
            .finish()
    }
}

/// A token server's answer (docker accepts `token` or the OAuth2 `access_token`).
#[derive(serde::Deserialize)]
pub(crate) struct TokenResponse {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

impl TokenResponse {
    /// The token and how long to use it: the server's `expires_in` (at least 60 s, as the
    /// distribution spec says), less a margin so a token is not used at the edge of its life.
    pub(crate) fn into_token(self, with_credentials: bool) -> Option<Token> {
        let value = self
            .token
            .filter(|t| !t.is_empty())
            .or(self.access_token.filter(|t| !t.is_empty()))?;
        let secs = self.expires_in.unwrap_or(60).max(60);
        Some(Token::new(
            value,
            Duration::from_secs(secs - 10),
            with_credentials,
        ))
    }
}

/// What a request carries in its `Authorization` header.
#[derive(Debug, Clone)]
pub(crate) enum Authorization {
    Basic(Credentials),
    Bearer(Token),
}

impl Authorization {
    pub(crate) fn header(&self) -> HeaderValue {
        match self {
            Authorization::Basic(c) => c.basic_header(),
            Authorization::Bearer(t) => {
                let mut v = HeaderValue::from_str(&format!("Bearer {}", t.value))
                    .unwrap_or_else(|_| HeaderValue::from_static("Bearer invalid"));
                v.set_sensitive(true);
                v
            }
        }
    }

    /// Whether this is a secret (a password, or a token obtained with one).
    pub(crate) fn is_secret(&self) -> bool {
        match self {
            Authorization::Basic(_) => true,
            Authorization::Bearer(t) => t.with_credentials,
        }
    }
}

/// The access a request needs, as token-server scopes (`repository:REPO:pull,push`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Scopes(Vec<String>);

impl Scopes {
    pub(crate) fn pull(repository: &str) -> Self {
        Scopes(vec![format!("repository:{repository}:pull")])
    }
    pub(crate) fn push(repository: &str) -> Self {
        Scopes(vec![format!("repository:{repository}:pull,push")])
    }
    pub(crate) fn mount(target: &str, from: &str) -> Self {
        Scopes(vec![
            format!("repository:{target}:pull,push"),
            format!("repository:{from}:pull"),
        ])
    }
    pub(crate) fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }
    /// The token-cache key.
    pub(crate) fn key(&self) -> String {
        self.0.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(h: &str) -> Challenge {
        let mut v = parse_challenges(h).unwrap_or_else(|| panic!("{h:?} should parse"));
        assert_eq!(v.len(), 1, "{h:?}: {v:?}");
        v.remove(0)
    }

    #[test]
    fn docker_hub_bearer_challenge() {
        let c = one(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/python:pull""#,
        );
        assert!(c.is_bearer());
        assert_eq!(c.param("realm"), Some("https://auth.docker.io/token"));
        assert_eq!(c.param("service"), Some("registry.docker.io"));
        assert_eq!(c.param("scope"), Some("repository:library/python:pull"));
    }

    #[test]
    fn quoted_values_keep_commas_equals_and_escapes() {
        let c = one(
            r#"Bearer realm="https://r.example/token?a=b,c",scope="repository:a/b:pull,push repository:c:pull",error="insufficient_scope",note="say \"hi\"\\""#,
        );
        assert_eq!(c.param("realm"), Some("https://r.example/token?a=b,c"));
        assert_eq!(
            c.param("scope"),
            Some("repository:a/b:pull,push repository:c:pull")
        );
        assert_eq!(c.param("error"), Some("insufficient_scope"));
        assert_eq!(c.param("note"), Some(r#"say "hi"\"#));
    }

    #[test]
    fn basic_challenge_and_case_insensitivity() {
        let c = one(r#"Basic realm="Registry Realm""#);
        assert!(c.is_basic());
        assert_eq!(c.param("realm"), Some("Registry Realm"));
        let c = one(r#"BEARER Realm = "x" , Service=reg"#);
        assert!(c.is_bearer());
        assert_eq!(c.param("realm"), Some("x"));
        assert_eq!(c.param("service"), Some("reg"));
        let c = one("Basic");
        assert!(c.is_basic() && c.params.is_empty());
    }

    #[test]
    fn several_challenges_in_one_header() {
        let v = parse_challenges(
            r#"Basic realm="a, b", Bearer realm="https://t/token",service="s", Negotiate"#,
        )
        .unwrap();
        let schemes: Vec<_> = v.iter().map(|c| c.scheme.as_str()).collect();
        assert_eq!(schemes, ["basic", "bearer", "negotiate"]);
        assert_eq!(v[0].param("realm"), Some("a, b"));
        assert_eq!(v[1].param("service"), Some("s"));

        let v = parse_challenges("Negotiate abc+/==, Basic realm=x").unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[1].param("realm"), Some("x"));
        let v = parse_challenges("Basic, Bearer realm=x").unwrap();
        assert_eq!(v.len(), 2);
    }

    #[test]
    fn malformed_challenges_are_rejected() {
        assert_eq!(
            parse_challenges(r#"Bearer realm="unterminated"#),
            None,
            "unterminated quote"
        );
        assert_eq!(parse_challenges(r#"Bearer realm=@"#), None);
        assert_eq!(parse_challenges(r#""quoted-scheme""#), None);
        assert_eq!(parse_challenges("").unwrap(), vec![]);
    }

    #[test]
    fn docker_config_auth_forms() {
        let b64 = base64::engine::general_purpose::STANDARD.encode("alice:s3cret:with:colons");
        let cfg = DockerConfig::from_str_for_test(&format!(
            r#"{{"auths": {{
                "https://index.docker.io/v1/": {{"auth": "{b64}"}},
                "localhost:5000": {{"username": "bob", "password": "pw"}},
                "https://us-docker.pkg.dev": {{"auth": "{b64}"}},
                "Registry.Example.com:443/v2/": {{"username": "carol", "password": "x"}},
                "helper-only.example": {{}}
            }}, "credHelpers": {{"gcr.io": "gcloud"}}, "credsStore": "desktop"}}"#
        ))
        .unwrap();
        // The helpers (stand-ins) have nothing stored: the `auths` entries answer.
        let (cfg, _) = fake_helpers(cfg);
        let hub = cfg.lookup("docker.io").unwrap();
        assert_eq!(hub.username, "alice");
        assert_eq!(hub.password(), "s3cret:with:colons");
        assert_eq!(cfg.lookup("index.docker.io"), Some(hub));
        assert_eq!(cfg.lookup("localhost:5000").unwrap().username, "bob");
        assert_eq!(cfg.lookup("localhost:5001"), None);
        assert_eq!(cfg.lookup("localhost"), None);
        assert_eq!(cfg.lookup("us-docker.pkg.dev").unwrap().username, "alice");
        assert_eq!(
            cfg.lookup("registry.example.com:443").unwrap().username,
            "carol"
        );
        assert_eq!(cfg.lookup("helper-only.example"), None);
        assert_eq!(cfg.helper_for("gcr.io"), Some("gcloud"));
        assert_eq!(cfg.helper_for("other.example"), Some("desktop"));
    }

    #[test]
    fn bad_config_names_the_entry_not_the_secret() {
        let err = DockerConfig::from_str_for_test(
            r#"{"auths": {"r.example": {"auth": "bm90LWEtcGFpcg=="}}}"#,
        )
        .unwrap_err();
        let msg = format!("{err}: {}", std::error::Error::source(&err).unwrap());
        assert!(msg.contains("r.example"), "{msg}");
        assert!(
            !msg.contains("bm90LWEtcGFpcg") && !msg.contains("not-a-pair"),
            "{msg}"
        );
        assert!(DockerConfig::from_str_for_test("{not json").is_err());
        assert!(
            DockerConfig::from_str_for_test("{}")
                .unwrap()
                .lookup("x")
                .is_none()
        );
    }

    #[test]
    fn missing_config_file_is_no_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = DockerConfig::load(&dir.path().join("config.json")).unwrap();
        assert!(cfg.lookup("docker.io").is_none());
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let c = Credentials::new("u", "hunter2");
        assert!(!format!("{c:?}").contains("hunter2"));
        let t = Token::new("tok-secret".into(), Duration::from_secs(60), true);
        assert!(!format!("{t:?}").contains("tok-secret"));
        let a = Authorization::Basic(c.clone());
        assert!(!format!("{a:?}").contains("hunter2"));
        assert!(a.header().is_sensitive());
        let cfg = DockerConfig::from_str_for_test(
            r#"{"auths": {"r.example": {"username": "u", "password": "hunter2"}}}"#,
        )
        .unwrap();
        assert!(!format!("{cfg:?}").contains("hunter2"));
    }

    fn exit(code: i32) -> std::process::ExitStatus {
        use std::os::unix::process::ExitStatusExt as _;
        std::process::ExitStatus::from_raw(code << 8)
    }

    #[test]
    fn credential_helper_output() {
        let ok = parse_helper_output(
            exit(0),
            br#"{"ServerURL":"r.example","Username":"alice","Secret":"hunter2"}"#,
            b"",
        )
        .unwrap()
        .unwrap();
        assert_eq!((ok.username.as_str(), ok.password()), ("alice", "hunter2"));
        assert_eq!(ok.identity_token(), None);

        let token = parse_helper_output(
            exit(0),
            br#"{"ServerURL":"r.example","Username":"<token>","Secret":"refresh-me"}"#,
            b"",
        )
        .unwrap()
        .unwrap();
        assert_eq!(token.identity_token(), Some("refresh-me"));

        // docker's "nothing stored" answer is no credentials, not a failure.
        let none = parse_helper_output(exit(1), b"credentials not found in native keychain\n", b"");
        assert_eq!(none, Ok(None));
        assert_eq!(
            parse_helper_output(exit(0), br#"{"Username":"","Secret":""}"#, b""),
            Ok(None)
        );

        let err =
            parse_helper_output(exit(2), b"", b"gcloud: command not found\nmore").unwrap_err();
        assert!(
            err.contains("exit status: 2") && err.contains("gcloud: command not found"),
            "{err}"
        );
        assert!(!err.contains("more"), "{err}");

        // Output that may hold the secret is never quoted.
        let err = parse_helper_output(exit(1), br#"{"Secret":"hunter2"}"#, b"").unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
        let err = parse_helper_output(exit(0), br#"{"Username":"u","Secret":"hunter2""#, b"")
            .unwrap_err();
        assert!(!err.contains("hunter2") && err.contains("Secret"), "{err}");
    }

    type Calls = Arc<Mutex<Vec<(String, String)>>>;

    /// A stand-in for `docker-credential-*`: "per" knows a.example, "store" knows b.example and
    /// Docker Hub, "broken" always fails. Records every call.
    fn fake_helpers(cfg: DockerConfig) -> (DockerConfig, Calls) {
        let calls: Calls = Arc::default();
        let seen = calls.clone();
        let cfg = cfg.with_runner(move |helper, url| {
            seen.lock()
                .unwrap()
                .push((helper.to_string(), url.to_string()));
            match (helper, url) {
                ("per", "a.example") => Ok(Some(Credentials::new("per-user", "per-pw"))),
                ("store", "b.example" | "https://index.docker.io/v1/") => {
                    Ok(Some(Credentials::new("store-user", "store-pw")))
                }
                ("broken", _) => Err("it exited with exit status: 1".into()),
                _ => Ok(None),
            }
        });
        (cfg, calls)
    }

    #[test]
    fn lookup_order_is_cred_helpers_then_creds_store_then_auths_then_auth_json() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.json");
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        std::fs::write(
            &config,
            format!(
                r#"{{"credHelpers": {{"https://A.example/v2/": "per"}}, "credsStore": "store",
                    "auths": {{
                        "a.example": {{"auth": "{0}"}},
                        "b.example": {{"auth": "{0}"}},
                        "c.example": {{"auth": "{0}"}}
                    }}}}"#,
                b64("file-user:file-pw")
            ),
        )
        .unwrap();
        let auth_json = dir.path().join("auth.json");
        std::fs::write(
            &auth_json,
            format!(
                r#"{{"auths": {{"c.example": {{"auth": "{0}"}}, "d.example": {{"auth": "{0}"}}}}}}"#,
                b64("podman-user:podman-pw")
            ),
        )
        .unwrap();
        let missing = dir.path().join("absent/auth.json");
        let cfg =
            DockerConfig::load_with_auth_files(&config, &[missing, auth_json.clone()]).unwrap();
        let (cfg, calls) = fake_helpers(cfg);

        let user = |r: &str| cfg.lookup(r).map(|c| c.username.clone());
        assert_eq!(user("a.example").as_deref(), Some("per-user"));
        assert_eq!(user("b.example").as_deref(), Some("store-user"));
        assert_eq!(user("docker.io").as_deref(), Some("store-user"));
        assert_eq!(user("c.example").as_deref(), Some("file-user"));
        assert_eq!(user("d.example").as_deref(), Some("podman-user"));
        assert_eq!(user("e.example"), None);

        assert_eq!(
            cfg.source("a.example"),
            Some(&CredentialSource::Helper {
                name: "per".into(),
                per_registry: true,
                config: Some(config.clone()),
            })
        );
        assert_eq!(
            cfg.source("c.example"),
            Some(&CredentialSource::DockerConfig(config.clone()))
        );
        assert_eq!(
            cfg.source("D.example"),
            Some(&CredentialSource::AuthFile(auth_json.clone()))
        );
        let hint = cfg.auth_hint("a.example");
        assert!(
            hint.contains("a.example") && hint.contains("docker-credential-per (credHelpers in"),
            "{hint}"
        );
        let hint = cfg.auth_hint("d.example");
        assert!(hint.contains(&auth_json.display().to_string()), "{hint}");
        let hint = cfg.auth_hint("e.example");
        assert!(
            hint.starts_with("no credentials for e.example in")
                && hint.contains(&auth_json.display().to_string()),
            "{hint}"
        );

        // Each registry's helpers ran once, in order, with the server URL docker would give.
        let before = calls.lock().unwrap().len();
        for r in [
            "a.example",
            "b.example",
            "c.example",
            "docker.io",
            "index.docker.io",
        ] {
            cfg.lookup(r);
        }
        assert_eq!(calls.lock().unwrap().len(), before, "answers are cached");
        let calls = calls.lock().unwrap().clone();
        let pairs: Vec<(&str, &str)> = calls
            .iter()
            .map(|(h, u)| (h.as_str(), u.as_str()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("per", "a.example"),
                ("store", "b.example"),
                ("store", "https://index.docker.io/v1/"),
                ("store", "c.example"),
                ("store", "d.example"),
                ("store", "e.example"),
            ]
        );
    }

    #[test]
    fn auth_json_alone_is_enough() {
        let dir = tempfile::tempdir().unwrap();
        let auth_json = dir.path().join("auth.json");
        std::fs::write(
            &auth_json,
            r#"{"auths": {"quay.io/team": {"username": "u", "password": "p"}}}"#,
        )
        .unwrap();
        let cfg = DockerConfig::load_with_auth_files(
            &dir.path().join("no-docker-config.json"),
            std::slice::from_ref(&auth_json),
        )
        .unwrap();
        assert_eq!(cfg.lookup("quay.io").unwrap().password(), "p");
        assert_eq!(cfg.path, None);

        std::fs::write(&auth_json, "{oops").unwrap();
        let err = DockerConfig::load_with_auth_files(
            &dir.path().join("no-docker-config.json"),
            std::slice::from_ref(&auth_json),
        )
        .unwrap_err();
        assert!(err.to_string().contains("auth.json"), "{err}");
    }

    #[test]
    fn a_failing_helper_is_named_with_its_registry() {
        let cfg = DockerConfig::from_str_for_test(
            r#"{"credHelpers": {"r.example": "broken"},
                "auths": {"r.example": {"username": "u", "password": "hunter2"}}}"#,
        )
        .unwrap();
        let (cfg, _) = fake_helpers(cfg);
        // First match wins: the helper is the source, and it failed.
        assert!(cfg.lookup("r.example").is_none());
        let e = cfg.helper_error("r.example").unwrap();
        assert_eq!(
            (e.helper.as_str(), e.registry.as_str()),
            ("broken", "r.example")
        );
        let hint = cfg.auth_hint("r.example");
        assert!(
            hint.contains("docker-credential-broken") && hint.contains("r.example"),
            "{hint}"
        );
        assert!(!hint.contains("hunter2") && !format!("{cfg:?}").contains("hunter2"));
        assert!(cfg.helper_error("other.example").is_none());
    }

    #[test]
    fn a_missing_helper_program_is_an_error_not_a_panic() {
        let err = run_credential_helper("vxbuild-test-no-such-helper", "r.example").unwrap_err();
        assert_eq!(
            err,
            "docker-credential-vxbuild-test-no-such-helper is not on PATH"
        );
    }

    #[test]
    fn a_helper_that_never_answers_is_stopped() {
        use std::os::unix::fs::PermissionsExt as _;
        let tmp = tempfile::tempdir().unwrap();
        let helper = tmp.path().join("docker-credential-sleepy");
        std::fs::write(&helper, "#!/bin/sh\nexec sleep 30\n").unwrap();
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
        let started = std::time::Instant::now();
        let err = run_helper_program(
            helper.to_str().unwrap(),
            "reg.example",
            std::time::Duration::from_millis(300),
        )
        .unwrap_err();
        assert!(err.contains("gave no answer within 0.3 s"), "{err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn json_key_credentials_keep_the_whole_key_as_password() {
        // Artifact Registry's `_json_key`: the password is a JSON document full of colons.
        let key = r#"{"type":"service_account","private_key":"-----BEGIN…:x"}"#;
        let b64 = base64::engine::general_purpose::STANDARD.encode(format!("_json_key:{key}"));
        let cfg = DockerConfig::from_str_for_test(&format!(
            r#"{{"auths": {{"us-docker.pkg.dev": {{"auth": "{b64}"}}}}}}"#
        ))
        .unwrap();
        let c = cfg.lookup("us-docker.pkg.dev").unwrap();
        assert_eq!((c.username.as_str(), c.password()), ("_json_key", key));
    }

    #[test]
    fn identity_token_in_config_json() {
        let b64 = base64::engine::general_purpose::STANDARD.encode("alice:");
        let cfg = DockerConfig::from_str_for_test(&format!(
            r#"{{"auths": {{"r.example": {{"auth": "{b64}", "identitytoken": "refresh-me"}}}}}}"#
        ))
        .unwrap();
        let c = cfg.lookup("r.example").unwrap();
        assert_eq!(c.identity_token(), Some("refresh-me"));
        assert!(!format!("{c:?}").contains("refresh-me"));
    }

    #[test]
    fn token_response_forms() {
        let t: TokenResponse = serde_json::from_str(r#"{"token":"a","expires_in":300}"#).unwrap();
        assert!(t.into_token(false).unwrap().is_fresh());
        let t: TokenResponse = serde_json::from_str(r#"{"access_token":"b"}"#).unwrap();
        assert_eq!(t.into_token(false).unwrap().value, "b");
        let t: TokenResponse = serde_json::from_str(r#"{"token":"","access_token":"c"}"#).unwrap();
        assert_eq!(t.into_token(false).unwrap().value, "c");
        let t: TokenResponse = serde_json::from_str(r#"{"expires_in":5}"#).unwrap();
        assert!(t.into_token(false).is_none());
    }

    #[test]
    fn scopes() {
        assert_eq!(Scopes::pull("a/b").key(), "repository:a/b:pull");
        assert_eq!(Scopes::push("a").key(), "repository:a:pull,push");
        assert_eq!(
            Scopes::mount("t", "f").iter().collect::<Vec<_>>(),
            ["repository:t:pull,push", "repository:f:pull"]
        );
    }
}
