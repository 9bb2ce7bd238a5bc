//! Issue 4, Google credentials: with nothing in Docker's config, a build pushing to Artifact
//! Registry gets an access token from Application Default Credentials or gcloud and sends it as
//! `oauth2accesstoken`. The real code paths run against local endpoints the libraries honour:
//! a metadata server at `GCE_METADATA_HOST`, a service-account key and a gcloud user ADC file
//! whose `token_uri` is a local server, an external_account whose STS `token_url` is local, and a
//! `gcloud` on PATH. The registry is served as `us-central1-docker.pkg.dev:PORT` (HTTPS with a
//! test CA, reached through `VXBUILD_RESOLVE`) and wants `oauth2accesstoken` + the one token.

use std::path::{Path, PathBuf};
use std::process::Output;

use base64::Engine as _;

use crate::build::{offline_push_args, shared_cache, text, tiny_project};
use crate::support::stub::{Request, Stub};
use crate::support::*;

const AR_HOST: &str = "us-central1-docker.pkg.dev";
const USER: &str = "oauth2accesstoken";
const TOKEN: &str = "ya29.test-access-token-8841";

struct Ar {
    reg: Registry,
    ca: TestCa,
    tmp: tempfile::TempDir,
}

impl Ar {
    fn start() -> Ar {
        let tmp = tempfile::tempdir().unwrap();
        let ca = TestCa::new(&tmp.path().join("ca"));
        let (cert, key) = ca.server_cert(&tmp.path().join("server"), AR_HOST);
        let reg = Registry::launch_on("127.0.0.1", Some((&cert, &key)), basic_auth(USER, TOKEN));
        skopeo(&[
            "copy",
            "--dest-tls-verify=false",
            &format!("--dest-creds={USER}:{TOKEN}"),
            &format!("oci:{}:{BASE_TAG}", base_layout().display()),
            &format!("docker://{}/{BASE_REPOSITORY}:{BASE_TAG}", reg.host()),
        ]);
        Ar { reg, ca, tmp }
    }

    fn registry(&self) -> String {
        format!("{AR_HOST}:{}", self.reg.port())
    }

    fn home(&self) -> PathBuf {
        self.tmp.path().join("home")
    }

    fn bin(&self) -> PathBuf {
        self.tmp.path().join("bin")
    }

    /// Build and push to `us-central1-docker.pkg.dev:PORT/proj/repo/trainer:v1` with no Docker
    /// config, `env` set and `bin` first on PATH.
    fn build(&self, env: &[(&str, String)]) -> Output {
        let (project, wheels) = tiny_project(&self.tmp.path().join("tiny"));
        let path = path_with_first(&self.bin());
        let mut cmd = vxbuild();
        cmd.args(offline_push_args(
            &project,
            &format!("{}/{BASE_REPOSITORY}:{BASE_TAG}", self.registry()),
            &wheels,
            &shared_cache(),
            &format!("{}/proj/repo/trainer:v1", self.registry()),
        ))
        .arg("-v")
        .env("PATH", path)
        .env("HOME", self.home())
        .env("DOCKER_CONFIG", self.tmp.path().join("no-docker-config"))
        .env("REGISTRY_AUTH_FILE", self.tmp.path().join("no-auth.json"))
        .env("VXBUILD_RESOLVE", format!("{AR_HOST}=127.0.0.1"))
        .env("SSL_CERT_FILE", &self.ca.cert)
        // Nothing of this machine's: no ADC, and a metadata server address where none listens.
        .env_remove("GOOGLE_APPLICATION_CREDENTIALS")
        .env("GCE_METADATA_HOST", format!("127.0.0.1:{}", free_port()))
        .env_remove("XDG_RUNTIME_DIR");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdin(std::process::Stdio::null())
            .output()
            .expect("run vxbuild")
    }

    fn assert_pushed(&self, out: &Output, source: &str) {
        assert!(
            out.status.success(),
            "vxbuild failed ({}):\n{}",
            out.status,
            text(&out.stderr)
        );
        assert!(
            text(&out.stdout)
                .starts_with(&format!("{}/proj/repo/trainer:v1@sha256:", self.registry())),
            "{}",
            text(&out.stdout)
        );
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains(&format!(
                "debug: basic auth for {} with credentials from {source}",
                self.registry()
            )),
            "{stderr}"
        );
        assert!(!stderr.contains(TOKEN), "the token leaked:\n{stderr}");
        skopeo(&[
            "inspect",
            "--tls-verify=false",
            &format!("--creds={USER}:{TOKEN}"),
            &format!("docker://{}/proj/repo/trainer:v1", self.reg.host()),
        ]);
    }
}

fn token_json() -> String {
    serde_json::json!({"access_token": TOKEN, "expires_in": 3599, "token_type": "Bearer"})
        .to_string()
}

#[test]
fn the_metadata_server_at_gce_metadata_host() {
    let ar = Ar::start();
    let metadata = Stub::start(|r: &Request| {
        let ok = r.method == "GET"
            && r.path == "/computeMetadata/v1/instance/service-accounts/default/token"
            && r.headers.get("metadata-flavor").map(String::as_str) == Some("Google");
        if ok {
            (200, token_json())
        } else {
            (404, "{}".into())
        }
    });
    let host = format!("127.0.0.1:{}", metadata.port);
    let out = ar.build(&[("GCE_METADATA_HOST", host.clone())]);
    ar.assert_pushed(
        &out,
        &format!(
            "Google Application Default Credentials (metadata server {host} from GCE_METADATA_HOST)"
        ),
    );
    let asked = metadata.requests();
    assert!(
        asked.iter().any(
            |r| r.query.contains("cloud-platform") && r.headers.contains_key("metadata-flavor")
        ),
        "{asked:#?}"
    );
}

/// A service-account key with a fresh RSA key (PKCS#8, as Google issues them) whose token_uri is
/// `token_uri`; returns the key file and the public key (PKCS#1 DER) to verify assertions.
fn service_account_key(dir: &Path, token_uri: &str) -> (PathBuf, Vec<u8>) {
    std::fs::create_dir_all(dir).unwrap();
    let pem = dir.join("key.pem");
    run(std::process::Command::new("openssl").args([
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        pem.to_str().unwrap(),
    ]));
    let public = run(std::process::Command::new("openssl").args([
        "rsa",
        "-in",
        pem.to_str().unwrap(),
        "-RSAPublicKey_out",
        "-outform",
        "DER",
    ]))
    .stdout;
    let key = serde_json::json!({
        "type": "service_account",
        "project_id": "proj",
        "private_key_id": "kid-1",
        "private_key": std::fs::read_to_string(&pem).unwrap(),
        "client_email": "builder@proj.iam.gserviceaccount.com",
        "client_id": "123",
        "token_uri": token_uri,
    });
    let file = dir.join("sa.json");
    std::fs::write(&file, key.to_string()).unwrap();
    (file, public)
}

/// Whether `jwt` is RS256-signed by `public` (PKCS#1 DER) with the claims a token endpoint checks.
fn valid_assertion(jwt: &str, public: &[u8], audience: &str) -> bool {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let Some((input, sig)) = jwt.rsplit_once('.') else {
        return false;
    };
    let Ok(sig) = b64.decode(sig) else {
        return false;
    };
    let key = ring::signature::UnparsedPublicKey::new(
        &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        public,
    );
    if key.verify(input.as_bytes(), &sig).is_err() {
        return false;
    }
    let claims: serde_json::Value = input
        .split('.')
        .nth(1)
        .and_then(|c| b64.decode(c).ok())
        .and_then(|c| serde_json::from_slice(&c).ok())
        .unwrap_or_default();
    claims["iss"] == "builder@proj.iam.gserviceaccount.com"
        && claims["aud"] == audience
        && claims["scope"] == "https://www.googleapis.com/auth/cloud-platform"
        && claims["exp"].as_u64() > claims["iat"].as_u64()
}

#[test]
fn a_service_account_key_is_exchanged_at_its_token_uri() {
    let ar = Ar::start();
    let public = std::sync::Arc::new(std::sync::OnceLock::<(Vec<u8>, String)>::new());
    let seen = public.clone();
    let endpoint = Stub::start(move |r: &Request| {
        let form = r.form();
        let (key, audience) = seen.get().expect("key made before the build");
        let ok = r.method == "POST"
            && form.get("grant_type").map(String::as_str)
                == Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
            && form
                .get("assertion")
                .is_some_and(|a| valid_assertion(a, key, audience));
        if ok {
            (200, token_json())
        } else {
            (400, r#"{"error":"invalid_grant"}"#.into())
        }
    });
    let token_uri = endpoint.url("/token");
    let (file, key) = service_account_key(&ar.tmp.path().join("sa"), &token_uri);
    public.set((key, token_uri)).unwrap();
    let out = ar.build(&[("GOOGLE_APPLICATION_CREDENTIALS", file.display().to_string())]);
    ar.assert_pushed(
        &out,
        &format!(
            "Google service-account key {} (GOOGLE_APPLICATION_CREDENTIALS)",
            file.display()
        ),
    );
    assert_eq!(
        endpoint.requests().len(),
        1,
        "one exchange for the whole build"
    );
    let stderr = text(&out.stderr);
    assert!(!stderr.contains("PRIVATE KEY"), "{stderr}");
}

#[test]
fn gclouds_user_adc_file_is_refreshed_at_its_token_uri() {
    let ar = Ar::start();
    let endpoint = Stub::start(|r: &Request| {
        let body = r.json();
        if body["grant_type"] == "refresh_token" && body["refresh_token"] == "user-refresh-1" {
            (200, token_json())
        } else {
            (400, r#"{"error":"invalid_grant"}"#.into())
        }
    });
    let adc = ar
        .home()
        .join(".config/gcloud/application_default_credentials.json");
    std::fs::create_dir_all(adc.parent().unwrap()).unwrap();
    std::fs::write(
        &adc,
        serde_json::json!({
            "type": "authorized_user",
            "client_id": "cid.apps.googleusercontent.com",
            "client_secret": "csecret",
            "refresh_token": "user-refresh-1",
            "token_uri": endpoint.url("/token"),
        })
        .to_string(),
    )
    .unwrap();
    let out = ar.build(&[]);
    ar.assert_pushed(
        &out,
        &format!("Google Application Default Credentials ({})", adc.display()),
    );
    assert!(!text(&out.stderr).contains("user-refresh-1"));
}

#[test]
fn an_external_account_exchanges_its_subject_token_at_sts() {
    let ar = Ar::start();
    let sts = Stub::start(|r: &Request| {
        let form = r.form();
        let ok = form.get("grant_type").map(String::as_str)
            == Some("urn:ietf:params:oauth:grant-type:token-exchange")
            && form.get("subject_token").map(String::as_str) == Some("oidc-subject-token-7");
        if ok {
            (
                200,
                serde_json::json!({
                    "access_token": TOKEN,
                    "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
                    "token_type": "Bearer",
                    "expires_in": 3599
                })
                .to_string(),
            )
        } else {
            (400, r#"{"error":"invalid_grant"}"#.into())
        }
    });
    let dir = ar.tmp.path().join("wif");
    std::fs::create_dir_all(&dir).unwrap();
    // What a CI's OIDC token looks like to the library: a file it reads.
    std::fs::write(dir.join("oidc-token"), "oidc-subject-token-7").unwrap();
    let config = dir.join("external-account.json");
    std::fs::write(
        &config,
        serde_json::json!({
            "type": "external_account",
            "audience": "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/gh",
            "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
            "token_url": sts.url("/v1/token"),
            "credential_source": {"file": dir.join("oidc-token").display().to_string()},
        })
        .to_string(),
    )
    .unwrap();
    let out = ar.build(&[(
        "GOOGLE_APPLICATION_CREDENTIALS",
        config.display().to_string(),
    )]);
    ar.assert_pushed(
        &out,
        &format!(
            "Google Application Default Credentials ({} from GOOGLE_APPLICATION_CREDENTIALS)",
            config.display()
        ),
    );
    assert!(!sts.requests().is_empty());
}

#[test]
fn gcloud_print_access_token_is_the_fallback() {
    let ar = Ar::start();
    write_executable(
        &ar.bin().join("gcloud"),
        &format!("#!/bin/sh\n[ \"$*\" = 'auth print-access-token' ] || exit 2\necho {TOKEN}\n"),
    );
    let out = ar.build(&[]);
    ar.assert_pushed(&out, "gcloud auth print-access-token");
}

#[test]
fn without_any_google_credentials_the_error_says_what_was_tried() {
    let ar = Ar::start();
    // A gcloud with no account (this machine may have a real one: keep it out).
    write_executable(
        &ar.bin().join("gcloud"),
        "#!/bin/sh\necho 'ERROR: (gcloud.auth.print-access-token) no active account' >&2\nexit 1\n",
    );
    let out = ar.build(&[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    let registry = ar.registry();
    assert!(
        stderr.contains("401 Unauthorized")
            && stderr.contains(&format!("no credentials for {registry} in "))
            && stderr.contains("Google Application Default Credentials (metadata server 127.0.0.1:")
            && stderr.contains("Connection refused")
            && stderr.contains(
                "gcloud auth print-access-token: it exited with exit status: 1: ERROR: (gcloud.auth.print-access-token) no active account"
            ),
        "{stderr}"
    );
}
