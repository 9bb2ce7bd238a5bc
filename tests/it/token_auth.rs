//! Issue 4, "the bearer-token dance": a registry configured with distribution's `auth: token`,
//! verifying JWTs signed by a token issuer the test runs ([`TokenServer`]). vxbuild pulls the
//! base from it and pushes to it with credentials from config.json — a password (docker's token
//! GET with Basic auth) or an identity token (the OAuth2 refresh-token POST).

use std::path::Path;
use std::process::Output;

use base64::Engine as _;

use crate::build::{offline_push_args, text, tiny_project};
use crate::support::token_server::{SERVICE, TokenServer};
use crate::support::*;

const USER: &str = "tok-user";
const PASSWORD: &str = "tok-password-93";
const REFRESH: &str = "refresh-token-5512";

struct Setup {
    tokens: TokenServer,
    reg: Registry,
    base: String,
}

fn token_registry_with_base(tmp: &Path) -> Setup {
    let tokens = TokenServer::start(&tmp.join("issuer"), USER, PASSWORD, REFRESH);
    let reg = Registry::start_with_extra_config(&tokens.registry_config());
    let base = format!("{}/{BASE_REPOSITORY}:{BASE_TAG}", reg.host());
    skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        &format!("--dest-creds={USER}:{PASSWORD}"),
        &format!("oci:{}:{BASE_TAG}", base_layout().display()),
        &format!("docker://{base}"),
    ]);
    Setup { tokens, reg, base }
}

/// Build the tiny project on the registry's base and push it to `REG/team/trainer:v1`, with
/// Docker config `config_json` and nothing else of the developer's.
fn build_and_push(tmp: &Path, s: &Setup, config_json: &str) -> Output {
    let (project, wheels) = tiny_project(&tmp.join("tiny"));
    let docker = tmp.join("docker");
    std::fs::create_dir_all(&docker).unwrap();
    std::fs::write(docker.join("config.json"), config_json).unwrap();
    vxbuild()
        .args(offline_push_args(
            &project,
            &s.base,
            &wheels,
            &tmp.join("cache"),
            &format!("{}/team/trainer:v1", s.reg.host()),
        ))
        .arg("-v")
        .env("HOME", tmp.join("home"))
        .env("DOCKER_CONFIG", &docker)
        .env("REGISTRY_AUTH_FILE", tmp.join("no-auth.json"))
        .env_remove("XDG_RUNTIME_DIR")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run vxbuild")
}

fn assert_secret_absent(out: &Output, secret: &str) {
    for stream in [text(&out.stdout), text(&out.stderr)] {
        assert!(!stream.contains(secret), "the secret leaked:\n{stream}");
    }
}

/// The image is in the registry, readable with a token, and runs.
fn assert_pushed_and_runs(out: &Output, s: &Setup, tmp: &Path) {
    assert!(
        out.status.success(),
        "vxbuild failed ({}):\n{}\n--- registry log\n{}",
        out.status,
        text(&out.stderr),
        s.reg.log()
    );
    let reference = text(&out.stdout).trim().to_string();
    assert!(
        reference.starts_with(&format!("{}/team/trainer:v1@sha256:", s.reg.host())),
        "{reference}"
    );
    let dir = tmp.join("pulled");
    skopeo(&[
        "copy",
        "--src-tls-verify=false",
        &format!("--src-creds={USER}:{PASSWORD}"),
        &format!("docker://{}/team/trainer:v1", s.reg.host()),
        &format!("oci:{}:v1", dir.display()),
    ]);
    let rootfs = unpack_layout(&dir, "v1", &tmp.join("unpacked"));
    let config = skopeo_inspect_config(&format!("oci:{}:v1", dir.display()));
    let run = run_entrypoint(&rootfs, &config);
    assert!(
        run.status.success(),
        "entrypoint failed:\n{}",
        text(&run.stderr)
    );
}

#[test]
fn token_auth_with_a_password_pulls_the_base_and_pushes() {
    let tmp = tempfile::tempdir().unwrap();
    let s = token_registry_with_base(tmp.path());
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    let out = build_and_push(
        tmp.path(),
        &s,
        &format!(
            r#"{{"auths": {{"{}": {{"auth": "{auth}"}}}}}}"#,
            s.reg.host()
        ),
    );
    // What the issuer saw from vxbuild (before skopeo pulls the image to check it).
    let requests = s.tokens.requests();
    assert_pushed_and_runs(&out, &s, tmp.path());
    assert_secret_absent(&out, PASSWORD);
    assert_secret_absent(&out, &auth);

    // docker's GET with Basic credentials: pull for the base, pull+push for the target together
    // with pull for the base's repository (so its layers can be mounted).
    let vx: Vec<&String> = requests
        .iter()
        .filter(|r| !r.contains("scope=repository:library/python:pull,push"))
        .collect();
    assert!(
        vx.iter()
            .any(|r| r
                == &&format!("GET basic={USER} scope=repository:{BASE_REPOSITORY}:pull -> 200")),
        "{requests:#?}"
    );
    assert!(
        vx.iter()
            .any(|r| r.starts_with(&format!("GET basic={USER}"))
                && r.contains("scope=repository:team/trainer:pull,push")
                && r.contains(&format!("scope=repository:{BASE_REPOSITORY}:pull"))),
        "{requests:#?}"
    );
    assert!(
        requests.iter().all(|r| r.ends_with("-> 200")),
        "{requests:#?}"
    );
    // The base's layers were mounted from its repository, not uploaded again.
    let stderr = text(&out.stderr);
    let mounts = stderr
        .lines()
        .filter(|l| {
            l.contains(&format!(
                "debug: POST http://{}/v2/team/trainer/blobs/uploads/?mount=sha256:",
                s.reg.host()
            )) && l.ends_with(&format!(
                "&from={BASE_REPOSITORY} (bearer token) -> 201 Created"
            ))
        })
        .count();
    assert_eq!(mounts, 2, "{stderr}");
    // Tokens are cached per scope: one request per scope set, however many requests use it.
    let mut seen = std::collections::HashSet::new();
    for r in &vx {
        assert!(seen.insert(r.as_str()), "asked twice: {r}\n{requests:#?}");
    }
}

#[test]
fn an_identity_token_is_exchanged_with_the_oauth2_refresh_grant() {
    let tmp = tempfile::tempdir().unwrap();
    let s = token_registry_with_base(tmp.path());
    let out = build_and_push(
        tmp.path(),
        &s,
        &format!(
            r#"{{"auths": {{"{}": {{"auth": "", "identitytoken": "{REFRESH}"}}}}}}"#,
            s.reg.host()
        ),
    );
    assert_pushed_and_runs(&out, &s, tmp.path());
    assert_secret_absent(&out, REFRESH);
    let vx: Vec<String> = s
        .tokens
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("POST"))
        .collect();
    assert!(
        vx.iter().any(|r| r.starts_with(&format!(
            "POST grant_type=refresh_token client_id=vxbuild service={SERVICE} "
        )) && r.contains("scope=repository:team/trainer:pull,push")
            && r.ends_with("-> 200")),
        "{vx:#?}"
    );
}

#[test]
fn a_wrong_password_names_the_token_server_and_the_credentials_file() {
    let tmp = tempfile::tempdir().unwrap();
    let s = token_registry_with_base(tmp.path());
    let wrong = "wrong-password-4471";
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{wrong}"));
    let out = build_and_push(
        tmp.path(),
        &s,
        &format!(
            r#"{{"auths": {{"{}": {{"auth": "{auth}"}}}}}}"#,
            s.reg.host()
        ),
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "the token server {} answered 401 Unauthorized",
            s.tokens.realm()
        )) && stderr.contains(&format!(
            "check the credentials for {} in {}",
            s.reg.host(),
            tmp.path().join("docker/config.json").display()
        )),
        "{stderr}"
    );
    assert_secret_absent(&out, wrong);
    assert_secret_absent(&out, &auth);
}
