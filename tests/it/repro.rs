//! Issue 3: reproducible bytecode.

use crate::build::{digest_of, offline_build, tiny_project};
use crate::support::*;

#[test]
fn compile_bytecode_gives_unchecked_hash_pycs_and_the_same_digest_twice() {
    let reg = Registry::start();
    let base = reg.push_base();
    let tmp = tempfile::tempdir().unwrap();
    let (project, wheels) = tiny_project(tmp.path());
    let mut digests = Vec::new();
    for (i, umask) in ["022", "077"].iter().enumerate() {
        let out_dir = tmp.path().join(format!("out-{i}"));
        let cache = tmp.path().join(format!("cache-{i}"));
        let cmd = format!(
            "umask {umask}; exec \"$@\" build {} --base-image {base} --no-index --find-links {} --no-lock --compile-bytecode --output oci:{} --cache-dir {}",
            project.display(),
            wheels.display(),
            out_dir.display(),
            cache.display()
        );
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .arg("sh")
            .arg(env!("CARGO_BIN_EXE_vxbuild"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        digests.push(digest_of(String::from_utf8_lossy(&out.stdout).trim()));
    }
    assert_eq!(
        digests[0], digests[1],
        "two --compile-bytecode builds must give the same digest"
    );

    // Without the flag no bytecode is written, and the digest differs.
    let (plain, _) = offline_build(
        &project,
        &base,
        &wheels,
        &tmp.path().join("cache-0"),
        &tmp.path().join("plain"),
        &["--no-lock"],
    );
    assert_ne!(digest_of(&plain), digests[0]);

    let rootfs = unpack_layout(
        &tmp.path().join("out-0"),
        "latest",
        &tmp.path().join("unpacked"),
    );
    let pyc = rootfs
        .join("usr/local/lib/python3.9/site-packages/tinydep/__pycache__/__init__.cpython-39.pyc");
    let bytes = std::fs::read(&pyc).unwrap_or_else(|e| panic!("{}: {e}", pyc.display()));
    // PEP 552 header: flags word 0b01 = hash-based, not checked against the source.
    assert_eq!(&bytes[4..8], &[1, 0, 0, 0], "unchecked-hash pyc");
    // The staging path is not recorded in the code objects.
    assert!(
        !bytes
            .windows(b"/vx/staging".len())
            .any(|w| w == b"/vx/staging"),
        "staging path leaked into the pyc"
    );
    let config = skopeo_inspect_config(&format!(
        "oci:{}:latest",
        tmp.path().join("out-0").display()
    ));
    let run = run_entrypoint(&rootfs, &config);
    assert_eq!(
        String::from_utf8_lossy(&run.stdout).trim(),
        "Training complete 42 helped"
    );
}

#[test]
fn source_date_epoch_sets_created_and_every_mtime() {
    let reg = Registry::start();
    let base = reg.push_base();
    let tmp = tempfile::tempdir().unwrap();
    let (project, wheels) = tiny_project(tmp.path());
    let out_dir = tmp.path().join("out");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vxbuild"))
        .args([
            "build",
            project.to_str().unwrap(),
            "--base-image",
            &base,
            "--no-index",
            "--find-links",
            wheels.to_str().unwrap(),
            "--no-lock",
        ])
        .args([
            "--output",
            &format!("oci:{}", out_dir.display()),
            "--cache-dir",
            tmp.path().join("cache").to_str().unwrap(),
        ])
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = skopeo_inspect_config(&format!("oci:{}:latest", out_dir.display()));
    assert_eq!(config["created"], "2023-11-14T22:13:20Z");
    // Every entry of every layer vxbuild wrote carries that mtime.
    let manifest = skopeo_inspect_raw(&format!("oci:{}:latest", out_dir.display()));
    let layers = manifest["layers"].as_array().unwrap();
    for l in &layers[layers.len() - 2..] {
        let digest = l["digest"].as_str().unwrap();
        let blob = out_dir
            .join("blobs/sha256")
            .join(&digest["sha256:".len()..]);
        let listing = std::process::Command::new("tar")
            .args(["--numeric-owner", "--full-time", "-tvzf"])
            .arg(&blob)
            .env("TZ", "UTC")
            .output()
            .unwrap();
        let listing = String::from_utf8_lossy(&listing.stdout).into_owned();
        assert!(!listing.is_empty());
        for line in listing.lines() {
            assert!(line.contains("2023-11-14 22:13:20"), "{line}");
            assert!(line.contains(" 0/0 "), "{line}");
        }
    }
    // A bad value names the variable.
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_vxbuild"))
        .args(["build", project.to_str().unwrap(), "--output", "oci:x"])
        .env("SOURCE_DATE_EPOCH", "yesterday")
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("SOURCE_DATE_EPOCH"));
}
