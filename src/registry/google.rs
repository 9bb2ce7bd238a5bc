//! Google credentials for Artifact Registry (`*-docker.pkg.dev`) and Container Registry
//! (`gcr.io`, `*.gcr.io`), used when Docker's config and containers' auth.json have nothing for
//! such a registry. The registry takes an OAuth2 access token as the password of the user
//! `oauth2accesstoken`. Sources, first that gives a token wins:
//!
//! 1. A service-account key named by `GOOGLE_APPLICATION_CREDENTIALS`: a JWT signed with the key
//!    is exchanged at the key's `token_uri` (the JWT-bearer grant, as gcloud and
//!    docker-credential-gcr do). google-cloud-auth would sign a self-signed JWT instead and never
//!    call `token_uri`; registries want an access token.
//! 2. Application Default Credentials through google-cloud-auth (Google's crate): the file named
//!    by `GOOGLE_APPLICATION_CREDENTIALS` (authorized_user, external_account — workload identity
//!    federation as GitHub Actions uses it — impersonated_service_account), gcloud's user ADC
//!    file (`~/.config/gcloud/application_default_credentials.json`), then the GCE/GKE/Cloud Run
//!    metadata server (`GCE_METADATA_HOST` overrides its address).
//! 3. `gcloud auth print-access-token`, when gcloud is on PATH.
//!
//! Every step is bounded in time; what each failed step said is kept for the message a 401
//! gets, never a token.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;

/// The username Google registries expect with an access token.
pub const ACCESS_TOKEN_USER: &str = "oauth2accesstoken";
const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// Bound for each source (a metadata server that never answers must not hang the build).
const STEP_TIMEOUT: Duration = Duration::from_secs(20);

/// Whether `registry` (`HOST[:PORT]`) is Artifact Registry or Container Registry.
pub fn is_google_registry(registry: &str) -> bool {
    let host = registry
        .rsplit_once(':')
        .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
        .map_or(registry, |(h, _)| h)
        .to_ascii_lowercase();
    host.ends_with(".pkg.dev") || host == "gcr.io" || host.ends_with(".gcr.io")
}

/// An access token and where it came from (for messages).
pub struct GoogleToken {
    pub token: String,
    pub source: String,
}

/// The first token the sources give, or what each of them said.
pub async fn access_token() -> Result<GoogleToken, Vec<String>> {
    let mut problems = Vec::new();
    let adc_file = std::env::var_os("GOOGLE_APPLICATION_CREDENTIALS")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    let mut key_done = false;
    if let Some(path) = &adc_file
        && let Ok(bytes) = std::fs::read(path)
        && let Ok(key) = serde_json::from_slice::<ServiceAccountKey>(&bytes)
        && key.kind == "service_account"
    {
        key_done = true;
        let source = format!(
            "Google service-account key {} (GOOGLE_APPLICATION_CREDENTIALS)",
            path.display()
        );
        match bounded(service_account_token(&key)).await {
            Ok(token) => return Ok(GoogleToken { token, source }),
            Err(e) => problems.push(format!("{source}: {e}")),
        }
    }
    if !key_done {
        let source = format!("Google Application Default Credentials ({})", adc_origin());
        match bounded(adc_token()).await {
            Ok(token) => return Ok(GoogleToken { token, source }),
            Err(e) => problems.push(format!("{source}: {e}")),
        }
    }
    let source = "gcloud auth print-access-token".to_string();
    match bounded(gcloud_token()).await {
        Ok(token) => Ok(GoogleToken { token, source }),
        Err(e) => {
            problems.push(format!("{source}: {e}"));
            Err(problems)
        }
    }
}

async fn bounded(
    f: impl std::future::Future<Output = Result<String, String>>,
) -> Result<String, String> {
    tokio::time::timeout(STEP_TIMEOUT, f)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {} s", STEP_TIMEOUT.as_secs())))
}

/// Which ADC source google-cloud-auth will use, for messages.
fn adc_origin() -> String {
    if let Some(p) = std::env::var_os("GOOGLE_APPLICATION_CREDENTIALS").filter(|v| !v.is_empty()) {
        return format!(
            "{} from GOOGLE_APPLICATION_CREDENTIALS",
            Path::new(&p).display()
        );
    }
    if let Some(home) = std::env::var_os("HOME") {
        let f = Path::new(&home).join(".config/gcloud/application_default_credentials.json");
        if f.is_file() {
            return f.display().to_string();
        }
    }
    match std::env::var("GCE_METADATA_HOST") {
        Ok(h) if !h.is_empty() => format!("metadata server {h} from GCE_METADATA_HOST"),
        _ => "metadata server metadata.google.internal".to_string(),
    }
}

async fn adc_token() -> Result<String, String> {
    let creds = google_cloud_auth::credentials::Builder::default()
        .with_scopes([SCOPE])
        .build_access_token_credentials()
        .map_err(|e| error_chain(&e))?;
    let token = creds.access_token().await.map_err(|e| error_chain(&e))?;
    Ok(token.token)
}

/// An error and its sources on one line: the innermost few (where the cause is), without the
/// retry boilerplate google-cloud-auth wraps them in.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut all = Vec::new();
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(s) = source {
        let text = s.to_string();
        let boilerplate = text.contains("future attempts may succeed")
            || text.contains("Subsequent calls with this credential")
            || text.starts_with("cannot create the authentication headers");
        if !boilerplate && !all.iter().any(|t: &String| t.contains(&text)) {
            all.push(text);
        }
        source = s.source();
    }
    let keep = all.len().saturating_sub(3);
    all[keep..].join(": ")
}

async fn gcloud_token() -> Result<String, String> {
    let out = tokio::process::Command::new("gcloud")
        .args(["auth", "print-access-token"])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => "gcloud is not on PATH".to_string(),
            _ => format!("cannot run gcloud: {e}"),
        })?;
    if !out.status.success() {
        let said = String::from_utf8_lossy(&out.stderr);
        let first = said.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        return Err(format!(
            "it exited with {}: {}",
            out.status,
            first.chars().take(200).collect::<String>()
        ));
    }
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if token.is_empty() || token.contains(char::is_whitespace) {
        return Err("it printed no single token".into());
    }
    Ok(token)
}

// No Debug: it holds a private key.
#[derive(serde::Deserialize)]
struct ServiceAccountKey {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    client_email: String,
    #[serde(default)]
    private_key: String,
    #[serde(default)]
    private_key_id: String,
    #[serde(default)]
    token_uri: String,
}

#[derive(serde::Deserialize)]
struct TokenAnswer {
    access_token: String,
}

/// The JWT-bearer grant (RFC 7523) at the key's `token_uri`.
async fn service_account_token(key: &ServiceAccountKey) -> Result<String, String> {
    if key.client_email.is_empty() || key.private_key.is_empty() {
        return Err("the key has no client_email or private_key".into());
    }
    let token_uri = if key.token_uri.is_empty() {
        "https://oauth2.googleapis.com/token"
    } else {
        key.token_uri.as_str()
    };
    let url = url::Url::parse(token_uri).map_err(|e| format!("token_uri is not a URL: {e}"))?;
    // The assertion is a credential: HTTPS, or this machine.
    if !super::transport::may_send_secret(&url) {
        return Err(format!(
            "refusing to send the assertion to {token_uri} over plain HTTP"
        ));
    }
    let assertion = sign_assertion(key, token_uri, now())?;
    let body = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", JWT_BEARER)
        .append_pair("assertion", &assertion)
        .finish();
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(STEP_TIMEOUT)
        .build()
        .map_err(|e| format!("cannot set up an HTTP client: {e}"))?;
    let resp = client
        .post(url)
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body(body)
        .send()
        .await
        .map_err(|e| {
            format!(
                "cannot reach {token_uri}: {}",
                error_chain(&e.without_url())
            )
        })?;
    let status = resp.status();
    let body = resp.bytes().await.unwrap_or_default();
    if !status.is_success() {
        // OAuth2 errors are {"error": "...", "error_description": "..."}: no secret in them.
        let said: String = String::from_utf8_lossy(&body).chars().take(300).collect();
        return Err(format!("{token_uri} answered {status}: {}", said.trim()));
    }
    serde_json::from_slice::<TokenAnswer>(&body)
        .ok()
        .map(|a| a.access_token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| format!("{token_uri} gave no access_token"))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `header.claims.signature`, RS256 with the key's PKCS#8 private key.
fn sign_assertion(key: &ServiceAccountKey, audience: &str, iat: u64) -> Result<String, String> {
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let der = pem_body(&key.private_key, "PRIVATE KEY")
        .ok_or("private_key is not a PEM \"PRIVATE KEY\" (PKCS#8)")?;
    let pair = ring::signature::RsaKeyPair::from_pkcs8(&der)
        .map_err(|e| format!("private_key is not an RSA key: {e}"))?;
    let mut header = serde_json::json!({"alg": "RS256", "typ": "JWT"});
    if !key.private_key_id.is_empty() {
        header["kid"] = key.private_key_id.clone().into();
    }
    let claims = serde_json::json!({
        "iss": key.client_email,
        "scope": SCOPE,
        "aud": audience,
        "iat": iat,
        "exp": iat + 3600,
    });
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let mut sig = vec![0; pair.public().modulus_len()];
    pair.sign(
        &ring::signature::RSA_PKCS1_SHA256,
        &ring::rand::SystemRandom::new(),
        input.as_bytes(),
        &mut sig,
    )
    .map_err(|_| "cannot sign with private_key".to_string())?;
    Ok(format!("{input}.{}", b64(&sig)))
}

/// The DER inside `-----BEGIN LABEL----- … -----END LABEL-----`.
fn pem_body(pem: &str, label: &str) -> Option<Vec<u8>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem.find(&begin)? + begin.len();
    let stop = start + pem[start..].find(&end)?;
    let b64: String = pem[start..stop]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn google_registries_by_host() {
        for r in [
            "us-central1-docker.pkg.dev",
            "europe-west4-docker.pkg.dev:443",
            "gcr.io",
            "eu.gcr.io",
            "US-DOCKER.PKG.DEV",
        ] {
            assert!(is_google_registry(r), "{r}");
        }
        for r in [
            "docker.io",
            "pkg.dev.example.com",
            "notgcr.io",
            "127.0.0.1:5000",
        ] {
            assert!(!is_google_registry(r), "{r}");
        }
    }

    #[test]
    fn pem_body_reads_the_labelled_block() {
        let pem = "junk\n-----BEGIN PRIVATE KEY-----\nAAEC\nAw==\n-----END PRIVATE KEY-----\n";
        assert_eq!(pem_body(pem, "PRIVATE KEY").unwrap(), vec![0, 1, 2, 3]);
        assert!(pem_body(pem, "RSA PRIVATE KEY").is_none());
    }
}
