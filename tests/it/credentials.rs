//! Issue 4, "Credentials" and "TLS and safety": vxbuild finds registry credentials where docker
//! and podman keep them — config.json `auths`, a credential helper, containers' auth.json — talks
//! TLS verified against the system roots plus SSL_CERT_FILE and certs.d, and never shows or
//! leaks a secret. Against a real registry serving HTTPS with a certificate from a CA made by the
//! test, with htpasswd basic auth, on this machine's non-loopback address (so nothing is waved
//! through as loopback).

use std::path::{Path, PathBuf};
use std::process::Output;

use base64::Engine as _;

use crate::build::{offline_push_args, shared_cache, text, tiny_project};
use crate::support::*;

const USER: &str = "vx-user";
const PASSWORD: &str = "correct-horse-battery";

/// A TLS registry that wants `USER`/`PASSWORD`, holding the base image (pushed by skopeo with
/// them), and the CA that signed its certificate.
struct TlsRegistry {
    reg: Registry,
    base: String,
    ca: TestCa,
}

fn tls_registry_with_base(tmp: &Path) -> TlsRegistry {
    let ca = TestCa::new(&tmp.join("ca"));
    let reg = Registry::start_tls_with_basic_auth(
        &machine_ip(),
        &ca,
        &tmp.join("server"),
        USER,
        PASSWORD,
    );
    let base = push_base_with_creds(&reg);
    TlsRegistry { reg, base, ca }
}

fn push_base_with_creds(reg: &Registry) -> String {
    let base = format!("{}/{BASE_REPOSITORY}:{BASE_TAG}", reg.host());
    skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        &format!("--dest-creds={USER}:{PASSWORD}"),
        &format!("oci:{}:{BASE_TAG}", base_layout().display()),
        &format!("docker://{base}"),
    ]);
    base
}

/// Trust `ca` for `reg` the way podman does: `~/.config/containers/certs.d/HOST:PORT/ca.crt`
/// under the HOME that [`build_and_push`] gives vxbuild.
fn trust_in_certs_d(tmp: &Path, reg: &Registry, ca: &TestCa) {
    let dir = tmp.join("home/.config/containers/certs.d").join(reg.host());
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(&ca.cert, dir.join("ca.crt")).unwrap();
}

/// Write `docker-credential-NAME` into `bin`: it logs the server URL it was asked for to
/// `bin/asked` and answers with `username`/`secret`.
fn write_helper(bin: &Path, name: &str, username: &str, secret: &str) {
    let script = format!(
        "#!/bin/sh\n\
         [ \"$1\" = get ] || exit 3\n\
         read -r url\n\
         printf '%s\\n' \"$url\" >> '{asked}'\n\
         printf '{{\"ServerURL\":\"%s\",\"Username\":\"{username}\",\"Secret\":\"{secret}\"}}\\n' \"$url\"\n",
        asked = bin.join("asked").display(),
    );
    write_executable(&bin.join(format!("docker-credential-{name}")), &script);
}

/// `vxbuild build` of the tiny project, pushed to `REG/x/y:v1`, with `env` set, `TMP/bin` first
/// on PATH, HOME = `TMP/home`, `args` added, and no Docker config or auth.json unless `env`
/// names one.
fn build_and_push(
    tmp: &Path,
    reg: &Registry,
    base: &str,
    env: &[(&str, &Path)],
    args: &[&str],
) -> Output {
    let (project, wheels) = tiny_project(&tmp.join("tiny"));
    let image = format!("{}/x/y:v1", reg.host());
    let cache = shared_cache();
    let path = path_with_first(&tmp.join("bin"));
    let mut cmd = vxbuild();
    cmd.args(offline_push_args(&project, base, &wheels, &cache, &image))
        .args(args)
        .env("PATH", path)
        // Keep the developer's own credentials and certificates out of it.
        .env("HOME", tmp.join("home"))
        .env("DOCKER_CONFIG", tmp.join("no-docker-config"))
        .env("REGISTRY_AUTH_FILE", tmp.join("no-auth.json"))
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("SSL_CERT_FILE")
        .env_remove("SSL_CERT_DIR");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(std::process::Stdio::null())
        .output()
        .expect("run vxbuild")
}

fn docker_config(dir: &Path, json: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), json).unwrap();
    dir.to_path_buf()
}

/// config.json with `auths` for `reg` (docker login's `auth` form).
fn auths_config(dir: &Path, reg: &Registry, password: &str) -> PathBuf {
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{password}"));
    docker_config(
        dir,
        &format!(r#"{{"auths": {{"{}": {{"auth": "{auth}"}}}}}}"#, reg.host()),
    )
}

fn assert_pushed(out: &Output, reg: &Registry) {
    assert!(
        out.status.success(),
        "vxbuild failed ({}):\n{}",
        out.status,
        text(&out.stderr)
    );
    let reference = text(&out.stdout).trim().to_string();
    assert!(
        reference.starts_with(&format!("{}/x/y:v1@sha256:", reg.host())),
        "{reference}"
    );
    // The registry really holds it.
    skopeo(&[
        "inspect",
        "--tls-verify=false",
        &format!("--creds={USER}:{PASSWORD}"),
        &format!("docker://{}/x/y:v1", reg.host()),
    ]);
}

fn assert_not_pushed(reg: &Registry) {
    let out = std::process::Command::new("skopeo")
        .args([
            "inspect",
            "--tls-verify=false",
            &format!("--creds={USER}:{PASSWORD}"),
            &format!("docker://{}/x/y:v1", reg.host()),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success(), "an image was pushed under the tag");
}

fn assert_no_secret(out: &Output, secret: &str) {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{secret}"));
    for stream in [text(&out.stdout), text(&out.stderr)] {
        assert!(
            !stream.contains(secret) && !stream.contains(&encoded),
            "the secret leaked:\n{stream}"
        );
    }
}

#[test]
fn config_json_auths_over_tls_trusted_through_ssl_cert_file() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tls_registry_with_base(tmp.path());
    let config = auths_config(&tmp.path().join("docker"), &t.reg, PASSWORD);
    // The system roots still count: SSL_CERT_FILE adds the test CA to them.
    let out = build_and_push(
        tmp.path(),
        &t.reg,
        &t.base,
        &[("DOCKER_CONFIG", &config), ("SSL_CERT_FILE", &t.ca.cert)],
        &["-v"],
    );
    assert_pushed(&out, &t.reg);
    // -v shows each request and how it was authorized, over HTTPS, and never the secret.
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "debug: PUT https://{}/v2/x/y/manifests/v1 (basic auth)",
            t.reg.host()
        )),
        "{stderr}"
    );
    assert_no_secret(&out, PASSWORD);
}

#[test]
fn an_untrusted_certificate_is_refused_with_what_to_do_unless_the_host_is_insecure() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tls_registry_with_base(tmp.path());
    let config = auths_config(&tmp.path().join("docker"), &t.reg, PASSWORD);
    let env = [("DOCKER_CONFIG", config.as_path())];

    let out = build_and_push(tmp.path(), &t.reg, &t.base, &env, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    let host = t.reg.host();
    assert!(
        stderr.contains(&format!("the TLS certificate of {host} is not trusted"))
            && stderr.contains(&format!("/etc/containers/certs.d/{host}/ca.crt"))
            && stderr.contains(&format!("--insecure-registry {host}")),
        "{stderr}"
    );
    assert_not_pushed(&t.reg);

    // Named as insecure, the certificate is not checked (and HTTPS is still used: the password
    // goes over TLS).
    let out = build_and_push(
        tmp.path(),
        &t.reg,
        &t.base,
        &env,
        &["--insecure-registry", &host],
    );
    assert_pushed(&out, &t.reg);
    assert_no_secret(&out, PASSWORD);
}

#[test]
fn credentials_are_never_sent_over_plain_http_to_another_machine() {
    let tmp = tempfile::tempdir().unwrap();
    // Plain HTTP on the machine's own address: not loopback as far as vxbuild can tell.
    let reg = Registry::launch_on(&machine_ip(), None, basic_auth(USER, PASSWORD));
    let base = push_base_with_creds(&reg);
    let config = auths_config(&tmp.path().join("docker"), &reg, PASSWORD);
    let out = build_and_push(
        tmp.path(),
        &reg,
        &base,
        &[("DOCKER_CONFIG", &config)],
        &["--insecure-registry", &reg.host()],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "refusing to send credentials to {} over plain HTTP",
            reg.host()
        )),
        "{stderr}"
    );
    assert_no_secret(&out, PASSWORD);
    assert_not_pushed(&reg);
}

#[test]
fn cred_helpers_entry_runs_the_credential_helper() {
    let tmp = tempfile::tempdir().unwrap();
    let TlsRegistry { reg, base, ca } = tls_registry_with_base(tmp.path());
    trust_in_certs_d(tmp.path(), &reg, &ca);
    let bin = tmp.path().join("bin");
    write_helper(&bin, "test", USER, PASSWORD);
    let config = docker_config(
        &tmp.path().join("docker"),
        &format!(r#"{{"credHelpers": {{"{}": "test"}}}}"#, reg.host()),
    );

    let out = build_and_push(tmp.path(), &reg, &base, &[("DOCKER_CONFIG", &config)], &[]);
    assert_pushed(&out, &reg);
    assert_no_secret(&out, PASSWORD);
    // Asked with the registry's host, once for the whole build (answers are cached).
    let asked = std::fs::read_to_string(bin.join("asked")).unwrap();
    assert_eq!(asked, format!("{}\n", reg.host()));
}

#[test]
fn wrong_password_from_a_helper_names_registry_and_helper_but_not_the_password() {
    let tmp = tempfile::tempdir().unwrap();
    let TlsRegistry { reg, base, ca } = tls_registry_with_base(tmp.path());
    trust_in_certs_d(tmp.path(), &reg, &ca);
    let bin = tmp.path().join("bin");
    let wrong = "not-the-password-71";
    write_helper(&bin, "test", USER, wrong);
    let config = docker_config(&tmp.path().join("docker"), r#"{"credsStore": "test"}"#);

    let out = build_and_push(tmp.path(), &reg, &base, &[("DOCKER_CONFIG", &config)], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("401 Unauthorized")
            && stderr.contains(&format!("check the credentials for {}", reg.host()))
            && stderr.contains("docker-credential-test (credsStore in"),
        "{stderr}"
    );
    assert_no_secret(&out, wrong);
}

#[test]
fn a_missing_helper_names_itself_and_the_registry() {
    let tmp = tempfile::tempdir().unwrap();
    let TlsRegistry { reg, base, ca } = tls_registry_with_base(tmp.path());
    trust_in_certs_d(tmp.path(), &reg, &ca);
    let bin = tmp.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let config = docker_config(
        &tmp.path().join("docker"),
        &format!(
            r#"{{"credHelpers": {{"{}": "vx-absent"}}, "auths": {{"{}": {{"username": "{USER}", "password": "{PASSWORD}"}}}}}}"#,
            reg.host(),
            reg.host()
        ),
    );

    let out = build_and_push(tmp.path(), &reg, &base, &[("DOCKER_CONFIG", &config)], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "credential helper docker-credential-vx-absent failed for {}: docker-credential-vx-absent is not on PATH",
            reg.host()
        )),
        "{stderr}"
    );
    assert_no_secret(&out, PASSWORD);
}

#[test]
fn registry_auth_file_is_used_when_docker_config_has_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let TlsRegistry { reg, base, ca } = tls_registry_with_base(tmp.path());
    trust_in_certs_d(tmp.path(), &reg, &ca);
    let bin = tmp.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    // A config.json with credentials for another registry only.
    let config = docker_config(
        &tmp.path().join("docker"),
        r#"{"auths": {"other.example": {"username": "a", "password": "b"}}}"#,
    );
    let auth_file = tmp.path().join("containers-auth.json");
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    std::fs::write(
        &auth_file,
        format!(r#"{{"auths": {{"{}": {{"auth": "{auth}"}}}}}}"#, reg.host()),
    )
    .unwrap();

    let out = build_and_push(
        tmp.path(),
        &reg,
        &base,
        &[
            ("DOCKER_CONFIG", &config),
            ("REGISTRY_AUTH_FILE", &auth_file),
        ],
        &[],
    );
    assert_pushed(&out, &reg);
    assert_no_secret(&out, PASSWORD);
}

#[test]
fn a_missing_ssl_cert_file_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tls_registry_with_base(tmp.path());
    let config = auths_config(&tmp.path().join("docker"), &t.reg, PASSWORD);
    let missing = tmp.path().join("no-such-bundle.pem");
    let out = build_and_push(
        tmp.path(),
        &t.reg,
        &t.base,
        &[("DOCKER_CONFIG", &config), ("SSL_CERT_FILE", &missing)],
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "failed to load trusted certificates from SSL_CERT_FILE ({}): cannot read it",
            missing.display()
        )),
        "{stderr}"
    );
    assert_not_pushed(&t.reg);
}
