//! A small token issuer for distribution's `auth: token`: the registry verifies the JWTs it signs
//! (ES256, the signing certificate in the `x5c` header and in the registry's `rootcertbundle`).
//!
//! It answers docker's token protocol — `GET REALM?service=…&scope=…` with Basic credentials —
//! and the OAuth2 form (`POST` with `grant_type=refresh_token` or `password`), as the
//! distribution spec describes them. Anything without valid credentials gets 401. Every request
//! is logged (without secrets) so tests can check which flow a client used.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;

use super::stub::{Request, Stub};

pub const SERVICE: &str = "vx-test-registry";
pub const ISSUER: &str = "vx-test-issuer";

pub struct TokenServer {
    pub port: u16,
    _stub: Stub,
    /// The signing certificate (PEM), for the registry's `rootcertbundle`.
    pub bundle: PathBuf,
    log: Arc<Mutex<Vec<String>>>,
}

struct Signer {
    key: ring::signature::EcdsaKeyPair,
    cert_der: Vec<u8>,
}

struct Accounts {
    user: String,
    password: String,
    refresh_token: String,
}

impl TokenServer {
    /// Start on a free loopback port, accepting `user`/`password` (Basic or the password grant)
    /// and `refresh_token` (the refresh grant). The signing certificate goes to `dir`.
    pub fn start(dir: &Path, user: &str, password: &str, refresh_token: &str) -> TokenServer {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "vxbuild test token signer");
        let cert = params.self_signed(&key).unwrap();
        std::fs::create_dir_all(dir).unwrap();
        let bundle = dir.join("token-signer.crt");
        std::fs::write(&bundle, cert.pem()).unwrap();
        let signer = Arc::new(Signer {
            key: ring::signature::EcdsaKeyPair::from_pkcs8(
                &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                &key.serialize_der(),
                &ring::rand::SystemRandom::new(),
            )
            .unwrap(),
            cert_der: cert.der().to_vec(),
        });
        let accounts = Arc::new(Accounts {
            user: user.into(),
            password: password.into(),
            refresh_token: refresh_token.into(),
        });
        let log = Arc::new(Mutex::new(Vec::new()));
        let kept = log.clone();
        let stub = Stub::start(move |r: &Request| {
            let (status, json, entry) = answer(
                &r.method,
                &r.query,
                &r.body,
                r.headers.get("authorization").map(String::as_str),
                &signer,
                &accounts,
            );
            kept.lock().unwrap().push(format!("{entry} -> {status}"));
            (status, json)
        });
        TokenServer {
            port: stub.port,
            bundle,
            log,
            _stub: stub,
        }
    }

    pub fn realm(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }

    /// The registry's `auth:` section for this issuer.
    pub fn registry_config(&self) -> String {
        format!(
            "auth:\n  token:\n    realm: {}\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
            self.realm(),
            self.bundle.display()
        )
    }

    /// One line per request: `GET basic=USER scope=… scope=…` or
    /// `POST grant_type=refresh_token scope=…`, with `-> STATUS`.
    pub fn requests(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

/// (status, JSON body, log entry)
fn answer(
    method: &str,
    query: &str,
    body: &[u8],
    authorization: Option<&str>,
    signer: &Signer,
    accounts: &Accounts,
) -> (u16, String, String) {
    let unauthorized = |entry: String| {
        (
            401,
            r#"{"errors":[{"code":"UNAUTHORIZED","message":"invalid credentials"}]}"#.to_string(),
            entry,
        )
    };
    let pairs = |s: &[u8]| -> Vec<(String, String)> {
        url::form_urlencoded::parse(s)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    };
    let get = |pairs: &[(String, String)], key: &str| {
        pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
    };
    match method {
        "GET" => {
            let q = pairs(query.as_bytes());
            let scopes: Vec<String> = q
                .iter()
                .filter(|(k, _)| k == "scope")
                .map(|(_, v)| v.clone())
                .collect();
            let user = authorization
                .and_then(|a| a.strip_prefix("Basic "))
                .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                .and_then(|raw| String::from_utf8(raw).ok())
                .and_then(|raw| {
                    let (u, p) = raw.split_once(':')?;
                    (u == accounts.user && p == accounts.password).then(|| u.to_string())
                });
            let entry = format!(
                "GET basic={} {}",
                user.as_deref().unwrap_or("-"),
                scopes
                    .iter()
                    .map(|s| format!("scope={s}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
            match user {
                Some(u) => {
                    let jwt = sign(signer, &u, &scopes);
                    (
                        200,
                        serde_json::json!({"token": jwt, "access_token": jwt, "expires_in": 300})
                            .to_string(),
                        entry,
                    )
                }
                None => unauthorized(entry),
            }
        }
        "POST" => {
            let f = pairs(body);
            let grant = get(&f, "grant_type").unwrap_or_default();
            let scopes: Vec<String> = get(&f, "scope")
                .unwrap_or_default()
                .split(' ')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
            let entry = format!(
                "POST grant_type={grant} client_id={} service={} {}",
                get(&f, "client_id").unwrap_or_default(),
                get(&f, "service").unwrap_or_default(),
                scopes
                    .iter()
                    .map(|s| format!("scope={s}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
            let ok = match grant.as_str() {
                "refresh_token" => {
                    get(&f, "refresh_token").as_deref() == Some(accounts.refresh_token.as_str())
                }
                "password" => {
                    get(&f, "username").as_deref() == Some(accounts.user.as_str())
                        && get(&f, "password").as_deref() == Some(accounts.password.as_str())
                }
                _ => false,
            };
            if !ok || get(&f, "service").as_deref() != Some(SERVICE) {
                return unauthorized(entry);
            }
            let jwt = sign(signer, &accounts.user, &scopes);
            (
                200,
                serde_json::json!({"access_token": jwt, "expires_in": 300, "scope": scopes.join(" ")})
                    .to_string(),
                entry,
            )
        }
        _ => (405, "{}".into(), method.to_string()),
    }
}

/// An ES256 JWT granting every requested action (`repository:NAME:ACTIONS`; names may hold ':').
fn sign(signer: &Signer, subject: &str, scopes: &[String]) -> String {
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let access: Vec<serde_json::Value> = scopes
        .iter()
        .filter_map(|s| {
            let (kind, rest) = s.split_once(':')?;
            let (name, actions) = rest.rsplit_once(':')?;
            Some(serde_json::json!({
                "type": kind,
                "name": name,
                "actions": actions.split(',').collect::<Vec<_>>(),
            }))
        })
        .collect();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header = serde_json::json!({
        "typ": "JWT",
        "alg": "ES256",
        "x5c": [base64::engine::general_purpose::STANDARD.encode(&signer.cert_der)],
    });
    let claims = serde_json::json!({
        "iss": ISSUER,
        "sub": subject,
        "aud": SERVICE,
        "exp": now + 300,
        "nbf": now - 10,
        "iat": now,
        "jti": format!("{now}-{}", scopes.len()),
        "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let sig = signer
        .key
        .sign(&ring::rand::SystemRandom::new(), signing_input.as_bytes())
        .unwrap();
    format!("{signing_input}.{}", b64(sig.as_ref()))
}
