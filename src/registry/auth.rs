//! Registry authentication: `WWW-Authenticate` challenges, credentials from Docker's config.json,
//! and bearer tokens. No type here prints a secret through `Debug` or `Display`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
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

/// Credentials from Docker's `config.json` (`auths`), keyed by normalized registry host.
#[derive(Debug, Clone, Default)]
pub struct DockerConfig {
    /// The file they came from (for messages); `None` when there was no file.
    pub path: Option<PathBuf>,
    entries: BTreeMap<String, Credentials>,
    helpers: BTreeMap<String, String>,
    creds_store: Option<String>,
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
}

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

    /// Load `path`; a missing file is no credentials, a malformed one is an error naming the file.
    pub fn load(path: &Path) -> Result<DockerConfig, RegistryError> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(DockerConfig::default());
            }
            Err(source) => {
                return Err(RegistryError::DockerConfig {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        Self::from_json(&bytes, path)
    }

    fn from_json(bytes: &[u8], path: &Path) -> Result<DockerConfig, RegistryError> {
        let file: ConfigFile =
            serde_json::from_slice(bytes).map_err(|source| RegistryError::DockerConfigFormat {
                path: path.to_path_buf(),
                source,
            })?;
        let mut entries = BTreeMap::new();
        for (key, entry) in file.auths {
            let creds = match (entry.auth.filter(|a| !a.is_empty()), entry.username) {
                (Some(auth), _) => decode_auth(&auth).ok_or_else(|| {
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
                })?,
                (None, Some(user)) if !user.is_empty() => {
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
                .map(|(k, v)| (normalize_registry_key(&k), v))
                .collect(),
            creds_store: file.creds_store.filter(|s| !s.is_empty()),
        })
    }

    /// Credentials for a registry as written in a reference (`docker.io`, `host:port`).
    pub fn lookup(&self, registry: &str) -> Option<&Credentials> {
        self.entries.get(&normalize_registry_key(registry))
    }

    /// A credential helper docker would use for this registry (not supported yet; for hints).
    pub fn helper_for(&self, registry: &str) -> Option<&str> {
        self.helpers
            .get(&normalize_registry_key(registry))
            .or(self.creds_store.as_ref())
            .map(String::as_str)
    }

    #[cfg(test)]
    pub(crate) fn from_str_for_test(json: &str) -> Result<DockerConfig, RegistryError> {
        Self::from_json(json.as_bytes(), Path::new("config.json"))
    }
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
