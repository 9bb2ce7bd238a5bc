//! Issue 3: vxbuild.lock — written by the first build, reused by the next (no resolution, same
//! digest), stale when its inputs change, `--locked` refuses a stale lock, the base never moves
//! silently, `vxbuild lock --upgrade` moves it.

use crate::build::{
    digest_of, offline_args as offline, offline_build as build, offline_build_output, text,
    tiny_project, vx_ok,
};
use crate::support::*;

#[test]
fn the_first_build_writes_the_lock_and_the_next_uses_it() {
    let reg = Registry::start();
    let base = reg.push_base();
    let tmp = tempfile::tempdir().unwrap();
    let (project, wheels) = tiny_project(tmp.path());
    let cache = tmp.path().join("cache");
    let lock_path = project.join("vxbuild.lock");
    let (first, stderr1) = build(
        &project,
        &base,
        &wheels,
        &cache,
        &tmp.path().join("o1"),
        &[],
    );
    assert!(stderr1.contains("Resolving dependencies"), "{stderr1}");
    let lock = std::fs::read_to_string(&lock_path).expect("the first build writes vxbuild.lock");
    let manifest_digest = manifest_of(&base);
    assert!(
        lock.contains(&format!("digest = \"{manifest_digest}\"")),
        "{lock}"
    );
    let app = lock.find("name = \"tinyapp\"").expect("tinyapp locked");
    let dep = lock.find("name = \"tinydep\"").expect("tinydep locked");
    assert!(app < dep, "packages are sorted by name:\n{lock}");
    assert!(
        lock.contains("wheel = \"tinydep-1.0-py3-none-any.whl\"") && lock.contains("sha256 = \""),
        "{lock}"
    );

    // The second build: no resolution, same digest, the lock untouched, and not in the image.
    let (second, stderr2) = build(
        &project,
        &base,
        &wheels,
        &tmp.path().join("cache-2"),
        &tmp.path().join("o2"),
        &[],
    );
    assert!(
        stderr2.contains("Using vxbuild.lock") && !stderr2.contains("Resolving dependencies"),
        "{stderr2}"
    );
    assert_eq!(digest_of(&first), digest_of(&second));
    assert_eq!(std::fs::read_to_string(&lock_path).unwrap(), lock);
    let rootfs = unpack_layout(&tmp.path().join("o2"), "latest", &tmp.path().join("u2"));
    assert!(
        !rootfs.join("usr/app/vxbuild.lock").exists(),
        "the lock is build metadata, not app code"
    );

    // --locked with the lock in place and fresh works too.
    build(
        &project,
        &base,
        &wheels,
        &cache,
        &tmp.path().join("o3"),
        &["--locked"],
    );

    // Inputs change: --locked fails naming what changed and writes nothing.
    std::fs::write(project.join("requirements.txt"), "tinyapp\ntinydep==1.0\n").unwrap();
    let out = offline_build_output(
        &project,
        &base,
        &wheels,
        &cache,
        &tmp.path().join("o4"),
        &["--locked"],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("--locked")
            && err.contains("stale")
            && err.contains("requirements.txt changed"),
        "{err}"
    );
    assert!(!tmp.path().join("o4/index.json").exists());
    assert_eq!(std::fs::read_to_string(&lock_path).unwrap(), lock);

    // Without --locked the build re-locks and says so.
    let (_, stderr5) = build(
        &project,
        &base,
        &wheels,
        &cache,
        &tmp.path().join("o5"),
        &[],
    );
    assert!(
        stderr5.contains("vxbuild.lock was stale (requirements.txt changed); re-locked"),
        "{stderr5}"
    );
    assert_ne!(std::fs::read_to_string(&lock_path).unwrap(), lock);

    // --no-lock neither reads nor writes it.
    std::fs::remove_file(&lock_path).unwrap();
    build(
        &project,
        &base,
        &wheels,
        &cache,
        &tmp.path().join("o6"),
        &["--no-lock"],
    );
    assert!(!lock_path.exists());
    // --locked without a lock fails.
    let out = offline_build_output(
        &project,
        &base,
        &wheels,
        &cache,
        &tmp.path().join("o7"),
        &["--locked"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("is missing; run `vxbuild lock`"),
        "{}",
        text(&out.stderr)
    );
}

fn manifest_of(reference: &str) -> String {
    let out = skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--format",
        "{{.Digest}}",
        &format!("docker://{reference}"),
    ]);
    text(&out).trim().to_string()
}

#[test]
fn a_moved_base_tag_is_reported_not_followed_until_lock_upgrade() {
    let reg = Registry::start();
    let base = reg.push_base();
    let tmp = tempfile::tempdir().unwrap();
    let (project, wheels) = tiny_project(tmp.path());
    let cache = tmp.path().join("cache");
    let mut args = vec!["lock".to_string()];
    args.extend(offline(&project, &base, &wheels, &cache));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let (lock_line, _) = vx_ok(&refs);
    assert_eq!(
        lock_line,
        project.join("vxbuild.lock").display().to_string()
    );
    let old = manifest_of(&base);
    let (first, _) = build(
        &project,
        &base,
        &wheels,
        &cache,
        &tmp.path().join("o1"),
        &[],
    );

    // Move the base tag: push an image built from it under the same tag.
    let moved = vx_ok(&[
        "build",
        tmp.path().join("project").to_str().unwrap(),
        "--base-image",
        &base,
        "--no-index",
        "--find-links",
        wheels.to_str().unwrap(),
        "--no-lock",
        "--image",
        &base,
        "--push",
        "--cache-dir",
        cache.to_str().unwrap(),
    ])
    .0;
    let new = manifest_of(&base);
    assert_ne!(old, new);
    assert_eq!(digest_of(&moved), new);

    // A plain build keeps the locked base and says the tag moved.
    let (second, stderr) = build(
        &project,
        &base,
        &wheels,
        &cache,
        &tmp.path().join("o2"),
        &[],
    );
    assert_eq!(
        digest_of(&first),
        digest_of(&second),
        "the base must not move silently"
    );
    assert!(
        stderr.contains("has moved") && stderr.contains("vxbuild lock --upgrade"),
        "{stderr}"
    );

    // `vxbuild lock` on an up-to-date lock leaves it; `--upgrade` moves the base.
    let before = std::fs::read_to_string(project.join("vxbuild.lock")).unwrap();
    vx_ok(&refs);
    assert_eq!(
        std::fs::read_to_string(project.join("vxbuild.lock")).unwrap(),
        before
    );
    let mut up = args.clone();
    up.push("--upgrade".into());
    let refs: Vec<&str> = up.iter().map(String::as_str).collect();
    vx_ok(&refs);
    let after = std::fs::read_to_string(project.join("vxbuild.lock")).unwrap();
    assert!(after.contains(&format!("digest = \"{new}\"")), "{after}");
    let (third, stderr3) = build(
        &project,
        &base,
        &wheels,
        &cache,
        &tmp.path().join("o3"),
        &[],
    );
    assert!(!stderr3.contains("has moved"), "{stderr3}");
    assert_ne!(digest_of(&first), digest_of(&third));
}

#[test]
fn with_a_lock_and_a_warm_cache_the_build_needs_no_network_at_all() {
    let reg = Registry::start();
    let base = reg.push_base();
    let tmp = tempfile::tempdir().unwrap();
    let (project, wheels) = tiny_project(tmp.path());
    let cache = tmp.path().join("cache");
    let (first, _) = build(
        &project,
        &base,
        &wheels,
        &cache,
        &tmp.path().join("o1"),
        &[],
    );
    // No registry, no wheel folder: everything comes from the lock and the cache.
    drop(reg);
    let empty = tmp.path().join("empty-wheels");
    std::fs::create_dir(&empty).unwrap();
    let (second, stderr) = build(
        &project,
        &base,
        &empty,
        &cache,
        &tmp.path().join("o2"),
        &["--locked"],
    );
    assert_eq!(digest_of(&first), digest_of(&second), "{stderr}");
    assert!(stderr.contains("Using vxbuild.lock"), "{stderr}");
}
