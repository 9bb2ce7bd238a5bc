//! The test support itself: the base fixture survives a push, a pull and an unpack and starts
//! python as python:3.9-slim does; a wheel from `make_wheel` is one pip installs.

use std::process::Command;

use crate::support::{
    Registry, make_wheel_requiring, pull_and_unpack, run, run_entrypoint, run_image,
    skopeo_inspect_config, skopeo_inspect_raw,
};

#[test]
fn base_fixture_pushes_pulls_and_runs_python_like_the_official_image() {
    let registry = Registry::start();
    let base = registry.push_base();
    assert_eq!(base, format!("{}/library/python:3.9-slim", registry.host()));

    let manifest = skopeo_inspect_raw(&base);
    assert_eq!(manifest["schemaVersion"], 2);
    assert_eq!(
        manifest["layers"].as_array().map(Vec::len),
        Some(2),
        "a debian layer and a python layer: {manifest}"
    );

    let config = skopeo_inspect_config(&base);
    assert_eq!(config["os"], "linux");
    assert_eq!(config["architecture"], "amd64");
    let env: Vec<&str> = config["config"]["Env"]
        .as_array()
        .expect("Env list")
        .iter()
        .filter_map(|e| e.as_str())
        .collect();
    assert!(
        env.contains(
            &"PATH=/usr/local/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        ),
        "{env:?}"
    );
    assert!(
        env.iter().any(|e| e.starts_with("PYTHON_VERSION=3.9.")),
        "{env:?}"
    );
    assert_eq!(config["config"]["Cmd"], serde_json::json!(["python3"]));

    let dir = tempfile::tempdir().unwrap();
    let rootfs = pull_and_unpack(&base, dir.path());
    assert!(
        rootfs
            .join("usr/local/bin/python3")
            .symlink_metadata()
            .is_ok()
    );

    let out = run_image(
        &rootfs,
        &config,
        &["python3", "-c", "import ssl; print('ok')"],
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n");

    let out = run_image(&rootfs, &config, &["pip", "--version"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("(python 3.9)"),
        "{out:?}"
    );

    // `python3` reading an empty stdin: the image's own start command, exiting 0.
    let out = run_entrypoint(&rootfs, &config);
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn made_wheel_installs_with_pip_and_has_a_valid_record() {
    let dir = tempfile::tempdir().unwrap();
    let wheel = make_wheel_requiring(
        dir.path(),
        "Hello.VX-pkg",
        "1.2.3",
        &[
            ("hello_vx/__init__.py", "GREETING = 'hi from hello_vx'\n"),
            ("hello_vx/data.txt", "payload\n"),
        ],
        &["numpy>=1.0"],
    );
    assert_eq!(
        wheel.file_name().unwrap(),
        "hello_vx_pkg-1.2.3-py3-none-any.whl"
    );

    // Same input, same bytes.
    let again = tempfile::tempdir().unwrap();
    let wheel2 = make_wheel_requiring(
        again.path(),
        "Hello.VX-pkg",
        "1.2.3",
        &[
            ("hello_vx/data.txt", "payload\n"),
            ("hello_vx/__init__.py", "GREETING = 'hi from hello_vx'\n"),
        ],
        &["numpy>=1.0"],
    );
    assert_eq!(
        std::fs::read(&wheel).unwrap(),
        std::fs::read(&wheel2).unwrap()
    );

    // RECORD checked independently of the code that wrote it.
    let check = r#"
import base64, hashlib, sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
record = [n for n in z.namelist() if n.endswith('.dist-info/RECORD')]
assert len(record) == 1, record
rows = [l.split(',') for l in z.read(record[0]).decode().splitlines()]
assert sorted(r[0] for r in rows) == sorted(z.namelist()), (rows, z.namelist())
for path, hash, size in rows:
    if path == record[0]:
        continue
    data = z.read(path)
    want = 'sha256=' + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()
    assert hash == want and int(size) == len(data), (path, hash, want)
meta = z.read('hello_vx_pkg-1.2.3.dist-info/METADATA').decode()
assert 'Requires-Dist: numpy>=1.0' in meta, meta
print('record ok')
"#;
    let out = run(Command::new("python3").arg("-c").arg(check).arg(&wheel));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "record ok\n");

    let target = dir.path().join("site");
    run(Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-index",
            "--quiet",
            "--target",
        ])
        .arg(&target)
        .arg(&wheel)
        .env("PIP_DISABLE_PIP_VERSION_CHECK", "1"));
    let out = run(Command::new("python3")
        .args(["-c", "import hello_vx; print(hello_vx.GREETING)"])
        .env("PYTHONPATH", &target));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi from hello_vx\n");
    assert!(target.join("hello_vx/data.txt").is_file());
    assert!(target.join("hello_vx_pkg-1.2.3.dist-info/RECORD").is_file());
}

#[test]
fn registry_with_basic_auth_refuses_anonymous_and_accepts_credentials() {
    let registry = Registry::start_with_basic_auth("tester", "s3cret");
    let url = format!("docker://{}/library/python:3.9-slim", registry.host());
    let layout = crate::support::base_layout();
    let src = format!("oci:{}:3.9-slim", layout.display());

    let anonymous = Command::new("skopeo")
        .args([
            "--insecure-policy",
            "copy",
            "--dest-tls-verify=false",
            &src,
            &url,
        ])
        .output()
        .unwrap();
    assert!(!anonymous.status.success(), "anonymous push was accepted");
    let stderr = String::from_utf8_lossy(&anonymous.stderr);
    assert!(stderr.contains("unauthorized"), "{stderr}");

    crate::support::skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds=tester:s3cret",
        &src,
        &url,
    ]);
    assert!(registry.blob_count() >= 3);
}
