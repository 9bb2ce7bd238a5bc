//! Issue 2, end to end: the examples build, push to a real registry, are pulled by skopeo, unpacked
//! by umoci, and their entrypoints run in the unpacked rootfs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use crate::support::*;

/// One cache for every build test in this run and the next (wheels are downloaded once).
pub fn shared_cache() -> PathBuf {
    let dir = match std::env::var_os("VXBUILD_TEST_CACHE") {
        Some(d) => PathBuf::from(d),
        None => {
            let base = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache")
                });
            base.join("vxbuild-test-fixtures/build-cache")
        }
    };
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Copy an example project into `dest` (file by file, so mtimes are new).
pub fn copy_example(name: &str, dest: &Path) -> PathBuf {
    let src = repo_root().join("examples").join(name);
    copy_tree(&src, dest);
    dest.to_path_buf()
}

pub fn copy_tree(src: &Path, dest: &Path) {
    std::fs::create_dir_all(dest).unwrap();
    let mut entries: Vec<_> = std::fs::read_dir(src).unwrap().flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let to = dest.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), &to).unwrap();
        }
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Run vxbuild; return its output without asserting success.
pub fn vx<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    vxbuild()
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run vxbuild")
}

/// Run vxbuild, assert success and exactly one stdout line; return (that line, stderr).
pub fn vx_ok<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(args: &[S]) -> (String, String) {
    let out = vx(args);
    assert!(
        out.status.success(),
        "vxbuild {args:?} failed ({}):\n{}",
        out.status,
        text(&out.stderr)
    );
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "stdout must hold exactly one line, got {stdout:?}"
    );
    (lines[0].to_string(), text(&out.stderr))
}

/// `PROJECT --base-image BASE --no-index --find-links WHEELS --cache-dir CACHE`: the arguments
/// of a build that resolves only from a local wheel folder.
pub fn offline_args(project: &Path, base: &str, wheels: &Path, cache: &Path) -> Vec<String> {
    [
        project.to_str().unwrap(),
        "--base-image",
        base,
        "--no-index",
        "--find-links",
        wheels.to_str().unwrap(),
        "--cache-dir",
        cache.to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec()
}

/// `build` + [`offline_args`] + `--image IMAGE --push`.
pub fn offline_push_args(
    project: &Path,
    base: &str,
    wheels: &Path,
    cache: &Path,
    image: &str,
) -> Vec<String> {
    let mut args = vec!["build".to_string()];
    args.extend(offline_args(project, base, wheels, cache));
    args.extend([
        "--image".to_string(),
        image.to_string(),
        "--push".to_string(),
    ]);
    args
}

/// `build` + [`offline_args`] + `--output oci:OUT` + `extra`.
pub fn offline_build_args(
    project: &Path,
    base: &str,
    wheels: &Path,
    cache: &Path,
    out: &Path,
    extra: &[&str],
) -> Vec<String> {
    let mut args = vec!["build".to_string()];
    args.extend(offline_args(project, base, wheels, cache));
    args.extend(["--output".to_string(), format!("oci:{}", out.display())]);
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// `vxbuild build` with [`offline_args`], into the OCI layout `out`, then `extra`; not asserted.
pub fn offline_build_output(
    project: &Path,
    base: &str,
    wheels: &Path,
    cache: &Path,
    out: &Path,
    extra: &[&str],
) -> Output {
    let args = offline_build_args(project, base, wheels, cache, out, extra);
    vx(&args)
}

/// As [`offline_build_output`], asserting success; returns (the stdout line, stderr).
pub fn offline_build(
    project: &Path,
    base: &str,
    wheels: &Path,
    cache: &Path,
    out: &Path,
    extra: &[&str],
) -> (String, String) {
    let args = offline_build_args(project, base, wheels, cache, out, extra);
    vx_ok(&args)
}

/// `HOST/REPO:TAG@DIGEST` → `HOST/REPO@DIGEST` (skopeo refuses a tag and a digest together).
pub fn by_digest(reference: &str) -> String {
    let (name, digest) = reference.rsplit_once('@').expect("pinned reference");
    let slash = name.rfind('/').unwrap_or(0);
    let repo = match name[slash..].rfind(':') {
        Some(colon) => &name[..slash + colon],
        None => name,
    };
    format!("{repo}@{digest}")
}

pub fn digest_of(reference: &str) -> String {
    reference
        .rsplit_once('@')
        .map(|(_, d)| d.to_string())
        .unwrap_or_else(|| panic!("{reference} is not pinned by digest"))
}

/// Build an example, push it, pull it back with skopeo and unpack it with umoci.
fn build_push_pull(
    example: &str,
    reg: &Registry,
    base: &str,
    tmp: &Path,
    extra: &[&str],
) -> (String, String, PathBuf, Value) {
    let project = copy_example(example, &tmp.join("project"));
    let image = format!("{}/examples/{example}:v1", reg.host());
    let cache = shared_cache();
    let mut args = vec![
        "build",
        project.to_str().unwrap(),
        "--base-image",
        base,
        "--image",
        &image,
        "--push",
        "--cache-dir",
        cache.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let (reference, stderr) = vx_ok(&args);
    assert!(
        reference.starts_with(&format!("{image}@sha256:")),
        "{reference}"
    );
    let rootfs = pull_and_unpack(&by_digest(&reference), tmp);
    let config = skopeo_inspect_config(&by_digest(&reference));
    (reference, stderr, rootfs, config)
}

fn env_of(config: &Value) -> Vec<String> {
    serde_json::from_value(config["config"]["Env"].clone()).unwrap()
}

fn assert_contract(config: &Value, rootfs: &Path, entrypoint: &[&str]) {
    let c = &config["config"];
    assert_eq!(c["WorkingDir"], "/usr/app");
    assert_eq!(c["Entrypoint"], serde_json::json!(entrypoint));
    assert!(
        c.get("Cmd").is_none_or(Value::is_null),
        "Cmd must be cleared: {c}"
    );
    let env = env_of(config);
    for want in [
        "HOME=/home",
        "PYTHONDONTWRITEBYTECODE=1",
        "PYTHONUNBUFFERED=1",
    ] {
        assert!(env.iter().any(|e| e == want), "{want} missing from {env:?}");
    }
    assert!(
        env.iter().any(|e| e.starts_with("PATH=/usr/local/bin")),
        "the base's PATH is kept: {env:?}"
    );
    assert_eq!(config["created"], "1970-01-01T00:00:00Z");
    use std::os::unix::fs::PermissionsExt;
    let app = std::fs::metadata(rootfs.join("usr/app")).unwrap();
    assert_eq!(
        app.permissions().mode() & 0o777,
        0o777,
        "/usr/app is created with mode 0777"
    );
    assert!(rootfs.join("home").is_dir(), "/home is present");
}

/// Run `argv` in the image's rootfs with the image's environment and working folder.
fn run_argv(rootfs: &Path, config: &Value, argv: &[&str]) -> Output {
    let mut c = config.clone();
    c["config"]["Entrypoint"] = serde_json::json!(argv);
    c["config"]["Cmd"] = Value::Null;
    run_image(rootfs, &c, &[])
}

#[test]
fn train_example_builds_pushes_pulls_and_prints_training_complete() {
    let reg = Registry::start();
    let base = reg.push_base();
    let tmp = tempfile::tempdir().unwrap();
    let (reference, _stderr, rootfs, config) =
        build_push_pull("train", &reg, &base, tmp.path(), &[]);
    assert_contract(&config, &rootfs, &["python", "train.py"]);
    let out = run_entrypoint(&rootfs, &config);
    assert_stdout_contains(&out, "Training complete");
    // Install paths and shebangs come from the base's own python.
    assert!(
        rootfs
            .join("usr/local/lib/python3.9/site-packages/sklearn")
            .is_dir()
    );
    let f2py = std::fs::read_to_string(rootfs.join("usr/local/bin/f2py")).unwrap();
    assert!(
        f2py.starts_with("#!/usr/local/bin/python3.9\n"),
        "{}",
        f2py.lines().next().unwrap_or("")
    );
    // Only wheels, no bytecode compiled at build time.
    assert!(
        !rootfs
            .join("usr/local/lib/python3.9/site-packages/sklearn/__pycache__")
            .exists()
    );
    // The app layer holds the project.
    assert!(
        rootfs.join("usr/app/train.py").is_file()
            && rootfs.join("usr/app/requirements.txt").is_file()
    );
    // Annotations name the base.
    let manifest = skopeo_inspect_raw(&by_digest(&reference));
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(
        manifest["annotations"]["org.opencontainers.image.base.name"],
        base.as_str()
    );
    assert!(
        manifest["annotations"]["org.opencontainers.image.base.digest"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    // Dependencies picked from the index are recorded as such, not as file:///vx/wheels/… URLs.
    let site = rootfs.join("usr/local/lib/python3.9/site-packages");
    assert!(!site.join("numpy-2.0.2.dist-info/direct_url.json").exists());
    assert!(site.join("numpy-2.0.2.dist-info/REQUESTED").exists());
    let scipy = std::fs::read_dir(&site)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("scipy-"))
        .expect("scipy installed as a dependency");
    assert!(
        !scipy.path().join("REQUESTED").exists(),
        "scipy was not requested by the user"
    );
}

#[test]
fn preprocess_example_runs_the_script_named_in_vxbuild_toml() {
    let reg = Registry::start();
    let base = reg.push_base();
    let tmp = tempfile::tempdir().unwrap();
    let (_reference, _stderr, rootfs, config) =
        build_push_pull("preprocess", &reg, &base, tmp.path(), &[]);
    assert_contract(&config, &rootfs, &["python", "preprocess_train.py"]);
    let out = run_entrypoint(&rootfs, &config);
    assert_stdout_contains(&out, "Preprocessing complete");
}

#[test]
fn gcs_example_leaves_the_large_csv_out_names_it_and_imports_storage() {
    let reg = Registry::start();
    let base = reg.push_base();
    let tmp = tempfile::tempdir().unwrap();
    let project = tmp.path().join("project");
    copy_example("gcs", &project);
    // 50 MB of CSV beside train.py, as in the article.
    let row = "0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1\n";
    let csv = row.repeat(50_000_000 / row.len());
    std::fs::write(project.join("large_data.csv"), csv).unwrap();
    let image = format!("{}/examples/gcs:v1", reg.host());
    let cache = shared_cache();
    let (reference, stderr) = vx_ok(&[
        "build",
        project.to_str().unwrap(),
        "--base-image",
        &base,
        "--image",
        &image,
        "--push",
        "--cache-dir",
        cache.to_str().unwrap(),
    ]);
    assert!(
        stderr.contains("large_data.csv") && stderr.contains("--max-file-size"),
        "stderr must name the left-out file and the flag:\n{stderr}"
    );
    assert!(
        stderr.contains("MB"),
        "stderr must give the size:\n{stderr}"
    );
    let rootfs = pull_and_unpack(&by_digest(&reference), tmp.path());
    let config = skopeo_inspect_config(&by_digest(&reference));
    assert!(rootfs.join("usr/app/train.py").is_file());
    assert!(
        !rootfs.join("usr/app/large_data.csv").exists(),
        "the CSV must not be in the image"
    );
    let out = run_argv(
        &rootfs,
        &config,
        &[
            "python",
            "-c",
            "import google.cloud.storage, sklearn, numpy; print('storage ok')",
        ],
    );
    assert_stdout_contains(&out, "storage ok");
    // Raising the limit puts it back.
    let (_r2, stderr2) = vx_ok(&[
        "build",
        project.to_str().unwrap(),
        "--base-image",
        &base,
        "--output",
        &format!("oci:{}", tmp.path().join("big").display()),
        "--max-file-size",
        "60MB",
        "--cache-dir",
        cache.to_str().unwrap(),
    ]);
    assert!(!stderr2.contains("large_data.csv"), "{stderr2}");
    let rootfs2 = unpack_layout(
        &tmp.path().join("big"),
        "latest",
        &tmp.path().join("unpacked-big"),
    );
    assert_eq!(
        std::fs::metadata(rootfs2.join("usr/app/large_data.csv"))
            .unwrap()
            .len(),
        50_000_000 / row.len() as u64 * row.len() as u64
    );
}

/// A project whose dependencies are tiny generated wheels: builds with no network at all.
pub fn tiny_project(dir: &Path) -> (PathBuf, PathBuf) {
    let wheels = dir.join("wheels");
    std::fs::create_dir_all(&wheels).unwrap();
    make_wheel(
        &wheels,
        "tinydep",
        "1.0",
        &[("tinydep/__init__.py", "VALUE = 42\n")],
    );
    make_wheel_requiring(
        &wheels,
        "tinyapp",
        "2.0",
        &[("tinyapp/__init__.py", "import tinydep\nNAME = 'tinyapp'\n")],
        &["tinydep>=1.0"],
    );
    let project = dir.join("project");
    std::fs::create_dir_all(project.join("pkg")).unwrap();
    std::fs::write(project.join("train.py"), "import tinyapp, tinydep\nfrom pkg import helper\nprint('Training complete', tinydep.VALUE, helper.X)\n").unwrap();
    std::fs::write(project.join("pkg/__init__.py"), "").unwrap();
    std::fs::write(project.join("pkg/helper.py"), "X = 'helped'\n").unwrap();
    std::fs::write(project.join("requirements.txt"), "tinyapp\n").unwrap();
    (project, wheels)
}

#[test]
fn unprivileged_user_builds_and_the_image_runs() {
    let reg = Registry::start();
    let base = reg.push_base();
    let tmp = tempfile::Builder::new()
        .prefix("vx-nobody-")
        .tempdir()
        .unwrap();
    let (project, wheels) = tiny_project(tmp.path());
    let layout = tmp.path().join("out");
    let cache = tmp.path().join("cache");
    std::fs::create_dir(&cache).unwrap();
    // The binary where the unprivileged user can run it.
    let bin = tmp.path().join("vxbuild");
    std::fs::copy(env!("CARGO_BIN_EXE_vxbuild"), &bin).unwrap();
    let is_root = unsafe { libc::geteuid() } == 0;
    if is_root {
        // Everything the build reads or writes belongs to nobody.
        let st = Command::new("chown")
            .args(["-R", "nobody:nogroup"])
            .arg(tmp.path())
            .status()
            .unwrap();
        assert!(st.success());
    }
    let args = [
        "build".to_string(),
        project.display().to_string(),
        "--base-image".into(),
        base.clone(),
        "--no-index".into(),
        "--find-links".into(),
        wheels.display().to_string(),
        "--output".into(),
        format!("oci:{}", layout.display()),
        "--cache-dir".into(),
        cache.display().to_string(),
    ];
    let mut cmd = if is_root {
        let mut c = Command::new("runuser");
        c.args([
            "-u",
            "nobody",
            "--",
            "env",
            "-i",
            "PATH=/usr/local/bin:/usr/bin:/bin",
            "HOME=/nonexistent",
        ])
        .arg(&bin);
        c
    } else {
        Command::new(&bin)
    };
    let out = cmd.args(&args).current_dir(tmp.path()).output().unwrap();
    assert!(
        out.status.success(),
        "unprivileged build failed:\n{}",
        text(&out.stderr)
    );
    let line = text(&out.stdout);
    assert!(
        line.trim()
            .starts_with(&format!("oci:{}:latest@sha256:", layout.display())),
        "{line}"
    );
    // Files the build wrote belong to the user who ran it.
    if is_root {
        let owner = Command::new("stat")
            .args(["-c", "%U"])
            .arg(layout.join("index.json"))
            .output()
            .unwrap();
        assert_eq!(text(&owner.stdout).trim(), "nobody");
        // The user who builds does not reach a byte: root, without the lock, gets the same digest.
        let root_cache = tempfile::tempdir().unwrap();
        let (as_root, _) = vx_ok(&[
            "build",
            project.to_str().unwrap(),
            "--base-image",
            &base,
            "--no-index",
            "--find-links",
            wheels.to_str().unwrap(),
            "--no-lock",
            "--output",
            &format!("oci:{}", tmp.path().join("as-root").display()),
            "--cache-dir",
            root_cache.path().to_str().unwrap(),
        ]);
        assert_eq!(digest_of(line.trim()), digest_of(&as_root));
    }
    let rootfs = unpack_layout(&layout, "latest", &tmp.path().join("unpacked"));
    let config = skopeo_inspect_config(&format!("oci:{}:latest", layout.display()));
    let run = run_entrypoint(&rootfs, &config);
    assert_eq!(
        text(&run.stdout).trim(),
        "Training complete 42 helped",
        "stderr: {}",
        text(&run.stderr)
    );
}

/// Set every mtime under `dir` to `secs` since the epoch.
fn set_mtimes(dir: &Path, secs: u64) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if e.file_type().unwrap().is_dir() {
            set_mtimes(&p, secs);
        }
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
        std::fs::File::open(&p).unwrap().set_modified(t).unwrap();
    }
}

#[test]
fn same_digest_from_other_paths_mtimes_and_umask_and_layout_matches_push() {
    let reg = Registry::start();
    let base = reg.push_base();
    let tmp = tempfile::tempdir().unwrap();
    let (project_a, wheels) = tiny_project(&tmp.path().join("a"));
    // The same files, copied to a deeper path in reverse order, with other mtimes and modes.
    let project_b = tmp.path().join("b/elsewhere/deeper/project");
    std::fs::create_dir_all(project_b.join("pkg")).unwrap();
    for rel in [
        "requirements.txt",
        "pkg/helper.py",
        "pkg/__init__.py",
        "train.py",
    ] {
        std::fs::copy(project_a.join(rel), project_b.join(rel)).unwrap();
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        project_b.join("train.py"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::fs::set_permissions(
        project_b.join("pkg"),
        std::fs::Permissions::from_mode(0o700),
    )
    .unwrap();
    set_mtimes(&project_a, 1_000_000_000);
    set_mtimes(&project_b, 1_700_000_000);
    let cache = shared_cache();
    let image = format!("{}/repro/tiny:v1", reg.host());
    let layout_a = tmp.path().join("layout-a");
    let (pushed, _) = vx_ok(&[
        "build",
        project_a.to_str().unwrap(),
        "--base-image",
        &base,
        "--no-index",
        "--find-links",
        wheels.to_str().unwrap(),
        "--image",
        &image,
        "--push",
        "--output",
        &format!("oci:{}", layout_a.display()),
        "--cache-dir",
        cache.to_str().unwrap(),
    ]);
    // The second build: another umask, another (cold) cache, another working folder, TZ, locale
    // and thread count.
    let layout_b = tmp.path().join("layout-b");
    let cache_b = tmp.path().join("cache-b");
    let out = Command::new("sh")
        .arg("-c")
        .arg("umask 077; exec \"$@\"")
        .arg("sh")
        .arg(env!("CARGO_BIN_EXE_vxbuild"))
        .args([
            "build",
            project_b.to_str().unwrap(),
            "--base-image",
            &base,
            "--no-index",
            "--find-links",
            wheels.to_str().unwrap(),
        ])
        .args([
            "--output",
            &format!("oci:{}:other", layout_b.display()),
            "--cache-dir",
            cache_b.to_str().unwrap(),
            "--jobs",
            "1",
        ])
        .env("TZ", "Pacific/Kiritimati")
        .env("LC_ALL", "C")
        .env("LANG", "tr_TR.UTF-8")
        .current_dir(&project_b)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let local = text(&out.stdout).trim().to_string();
    assert_eq!(
        digest_of(&pushed),
        digest_of(&local),
        "same inputs must give the same digest:\n{pushed}\n{local}"
    );
    // The OCI layout written beside the push holds the pushed manifest.
    let index: Value =
        serde_json::from_slice(&std::fs::read(layout_a.join("index.json")).unwrap()).unwrap();
    assert_eq!(
        index["manifests"][0]["digest"].as_str().unwrap(),
        digest_of(&pushed)
    );
    let raw = skopeo_inspect_raw(&by_digest(&pushed));
    let layout_raw = std::fs::read(
        layout_a
            .join("blobs/sha256")
            .join(&digest_of(&pushed)["sha256:".len()..]),
    )
    .unwrap();
    assert_eq!(serde_json::from_slice::<Value>(&layout_raw).unwrap(), raw);
    // An OCI archive of the same build holds the same manifest too.
    let archive = tmp.path().join("img.tar");
    let (arch_ref, _) = vx_ok(&[
        "build",
        project_a.to_str().unwrap(),
        "--base-image",
        &base,
        "--no-index",
        "--find-links",
        wheels.to_str().unwrap(),
        "--output",
        &format!("oci-archive:{}", archive.display()),
        "--cache-dir",
        cache.to_str().unwrap(),
    ]);
    assert_eq!(digest_of(&arch_ref), digest_of(&pushed));
    let from_archive = skopeo_inspect_raw(&format!("oci-archive:{}", archive.display()));
    assert_eq!(from_archive, raw);
}

#[test]
fn source_distributions_and_bad_references_fail_cleanly() {
    let reg = Registry::start();
    let base = reg.push_base();
    let tmp = tempfile::tempdir().unwrap();
    let (project, wheels) = tiny_project(tmp.path());
    // A package published only as a source distribution.
    std::fs::write(wheels.join("onlysdist-1.0.tar.gz"), b"not really a tarball").unwrap();
    std::fs::write(project.join("requirements.txt"), "tinyapp\nonlysdist\n").unwrap();
    let image = format!("{}/bad/sdist:v1", reg.host());
    let cache = tmp.path().join("cache");
    let out = vx(&[
        "build",
        project.to_str().unwrap(),
        "--base-image",
        &base,
        "--no-index",
        "--find-links",
        wheels.to_str().unwrap(),
        "--image",
        &image,
        "--push",
        "--cache-dir",
        cache.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("onlysdist") && stderr.contains("wheels only"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
    // Nothing was published under the tag.
    let inspect = Command::new("skopeo")
        .args([
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{image}"),
        ])
        .output()
        .unwrap();
    assert!(
        !inspect.status.success(),
        "no image may exist under the tag after a failed build"
    );

    // A base that does not exist: exit 1, the reference named.
    std::fs::write(project.join("requirements.txt"), "tinyapp\n").unwrap();
    let missing = format!("{}/library/python:no-such-tag", reg.host());
    let out = vx(&[
        "build",
        project.to_str().unwrap(),
        "--base-image",
        &missing,
        "--output",
        &format!("oci:{}", tmp.path().join("o").display()),
        "--cache-dir",
        cache.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("python:no-such-tag"), "{stderr}");
    assert!(
        !tmp.path().join("o/index.json").exists(),
        "no layout may be written after a failed build"
    );

    // Usage errors: exit 2, the flag named.
    let out = vx(&["build", project.to_str().unwrap(), "--push"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--image"),
        "{}",
        text(&out.stderr)
    );
    let out = vx(&[
        "build",
        project.to_str().unwrap(),
        "--script",
        "nope.py",
        "--output",
        "oci:x",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--script: nope.py does not exist"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_script_left_out_by_an_ignore_file_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (project, _wheels) = tiny_project(tmp.path());
    std::fs::write(project.join(".dockerignore"), "train.py\n").unwrap();
    let out = vx(&[
        "build",
        project.to_str().unwrap(),
        "--base-image",
        "127.0.0.1:1/none:x",
        "--output",
        &format!("oci:{}", tmp.path().join("o").display()),
        "--cache-dir",
        tmp.path().join("c").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("--script: train.py is left out"),
        "{stderr}"
    );
}

#[test]
fn base_on_another_registry_is_streamed_across_and_extra_packages_install() {
    let source = Registry::start();
    let base = source.push_base();
    let target = Registry::start();
    let tmp = tempfile::tempdir().unwrap();
    let (project, wheels) = tiny_project(tmp.path());
    // tinyapp comes as a local wheel inside the project; tinydep from --find-links.
    std::fs::create_dir(project.join("dist")).unwrap();
    let app_wheel = std::fs::read_dir(&wheels)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("tinyapp-"))
        .unwrap();
    std::fs::rename(
        app_wheel.path(),
        project.join("dist").join(app_wheel.file_name()),
    )
    .unwrap();
    std::fs::remove_file(project.join("requirements.txt")).unwrap();
    let extra = format!("dist/{}", app_wheel.file_name().to_string_lossy());
    // An ignored folder brought back with --extra-dirs; another ignored folder stays out.
    std::fs::create_dir_all(project.join("configs/prod")).unwrap();
    std::fs::write(project.join("configs/prod/settings.yaml"), "lr: 0.1\n").unwrap();
    std::fs::create_dir_all(project.join("scratch")).unwrap();
    std::fs::write(project.join("scratch/notes.txt"), "x\n").unwrap();
    std::fs::write(project.join(".dockerignore"), "configs/\nscratch/\ndist/\n").unwrap();
    let image = format!("{}/team/trainer:v2", target.host());
    let cache = tmp.path().join("cache");
    let (reference, _) = vx_ok(&[
        "build",
        project.to_str().unwrap(),
        "--base-image",
        &base,
        "--no-index",
        "--find-links",
        wheels.to_str().unwrap(),
        "--extra-packages",
        &extra,
        "--extra-dirs",
        "configs",
        "--image",
        &image,
        "--push",
        "--cache-dir",
        cache.to_str().unwrap(),
    ]);
    // skopeo pulls every blob from the target registry alone, verifying digests.
    let rootfs = pull_and_unpack(&by_digest(&reference), tmp.path());
    let config = skopeo_inspect_config(&by_digest(&reference));
    let out = run_entrypoint(&rootfs, &config);
    assert_eq!(
        text(&out.stdout).trim(),
        "Training complete 42 helped",
        "stderr: {}",
        text(&out.stderr)
    );
    // The local wheel is a direct reference, and was requested.
    let site = rootfs.join("usr/local/lib/python3.9/site-packages");
    assert!(site.join("tinyapp-2.0.dist-info/direct_url.json").exists());
    assert!(site.join("tinyapp-2.0.dist-info/REQUESTED").exists());
    assert!(!site.join("tinydep-1.0.dist-info/direct_url.json").exists());
    assert_eq!(
        std::fs::read_to_string(rootfs.join("usr/app/configs/prod/settings.yaml")).unwrap(),
        "lr: 0.1\n"
    );
    assert!(!rootfs.join("usr/app/scratch").exists() && !rootfs.join("usr/app/dist").exists());
    // Base layers (2) + dependencies + application + config + the manifest (distribution stores
    // manifests as blobs too) landed in the target.
    assert_eq!(
        target.blob_count(),
        6,
        "every blob of the image is in the target registry"
    );
}

/// Where the host's ensurepip keeps its bundled pip wheel (a pip wheel we can use offline).
fn bundled_pip_wheel() -> PathBuf {
    let out = Command::new("python3").args(["-c", "import ensurepip, os; print(os.path.join(os.path.dirname(ensurepip.__file__), '_bundled'))"]).output().unwrap();
    let dir = PathBuf::from(text(&out.stdout).trim());
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("no ensurepip bundle at {}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("pip-"))
        .expect("a bundled pip wheel")
}

#[test]
fn a_base_without_pip_gets_a_bootstrapped_pip_wheel_not_the_hosts_pip() {
    let reg = Registry::start();
    let tmp = tempfile::tempdir().unwrap();
    // A base like the fixture, with pip removed from its site-packages (a new layer of whiteouts).
    let layout = tmp.path().join("nopip-layout");
    run(Command::new("cp").arg("-r").arg(base_layout()).arg(&layout));
    let bundle = tmp.path().join("bundle");
    let mut unpack = Command::new("umoci");
    unpack.arg("unpack");
    if unsafe { libc::geteuid() } != 0 {
        unpack.arg("--rootless");
    }
    run(unpack
        .arg("--image")
        .arg(format!("{}:{BASE_TAG}", layout.display()))
        .arg(&bundle));
    let site = bundle.join("rootfs/usr/local/lib/python3.9/site-packages");
    for e in std::fs::read_dir(&site).unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with("pip") {
            std::fs::remove_dir_all(e.path()).unwrap();
        }
    }
    for bin in ["pip", "pip3", "pip3.9"] {
        let _ = std::fs::remove_file(bundle.join("rootfs/usr/local/bin").join(bin));
    }
    run(Command::new("umoci")
        .args(["repack", "--image"])
        .arg(format!("{}:nopip", layout.display()))
        .arg(&bundle));
    let base = format!("{}/library/python:nopip", reg.host());
    skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        &format!("oci:{}:nopip", layout.display()),
        &format!("docker://{base}"),
    ]);

    let (project, wheels) = tiny_project(tmp.path());
    let pip_wheel = bundled_pip_wheel();
    std::fs::copy(&pip_wheel, wheels.join(pip_wheel.file_name().unwrap())).unwrap();
    let out_layout = tmp.path().join("out");
    let (_reference, stderr) = offline_build(
        &project,
        &base,
        &wheels,
        &tmp.path().join("cache"),
        &out_layout,
        &[],
    );
    assert!(
        stderr.contains("using a pip wheel for Python 3.9"),
        "the bootstrap is announced:\n{stderr}"
    );
    let rootfs = unpack_layout(&out_layout, "latest", &tmp.path().join("unpacked"));
    let config = skopeo_inspect_config(&format!("oci:{}:latest", out_layout.display()));
    let run_out = run_entrypoint(&rootfs, &config);
    assert_eq!(
        text(&run_out.stdout).trim(),
        "Training complete 42 helped",
        "stderr: {}",
        text(&run_out.stderr)
    );
    // pip ran from the wheel: it is not installed into the image.
    assert!(
        !rootfs
            .join("usr/local/lib/python3.9/site-packages/pip")
            .exists()
    );

    // With no pip wheel anywhere, the error says what is missing and where it looked.
    std::fs::remove_file(wheels.join(pip_wheel.file_name().unwrap())).unwrap();
    let out = offline_build_output(
        &project,
        &base,
        &wheels,
        &tmp.path().join("cache2"),
        &tmp.path().join("o2"),
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("has no pip, which cannot write `pip install --report`"),
        "{stderr}"
    );
    assert!(stderr.contains(wheels.to_str().unwrap()), "{stderr}");
}

#[test]
fn a_wheel_entry_that_would_land_outside_the_staging_root_is_refused() {
    let reg = Registry::start();
    let base = reg.push_base();
    let tmp = tempfile::tempdir().unwrap();
    let (project, wheels) = tiny_project(tmp.path());
    make_wheel(
        &wheels,
        "evil",
        "1.0",
        &[
            ("evil/__init__.py", ""),
            (
                "evil-1.0.data/data/../../../../../../../etc/evil.conf",
                "owned\n",
            ),
        ],
    );
    std::fs::write(project.join("requirements.txt"), "tinyapp\nevil\n").unwrap();
    let out = vx(&[
        "build",
        project.to_str().unwrap(),
        "--base-image",
        &base,
        "--no-index",
        "--find-links",
        wheels.to_str().unwrap(),
        "--output",
        &format!("oci:{}", tmp.path().join("o").display()),
        "--cache-dir",
        tmp.path().join("cache").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("evil") && stderr.contains("outside"),
        "{stderr}"
    );
    assert!(!Path::new("/etc/evil.conf").exists());
    assert!(!tmp.path().join("o/index.json").exists());
}

#[test]
fn a_multi_platform_base_index_resolves_to_the_host_platform() {
    let reg = Registry::start();
    let base = reg.push_base();
    let tmp = tempfile::tempdir().unwrap();
    let (project, wheels) = tiny_project(tmp.path());
    let cache = tmp.path().join("cache");
    // Some other existing manifest of the same repository to stand as the index's arm64 entry
    // (the registry checks that an index's manifests exist, not their platforms).
    let (other, _) = vx_ok(&[
        "build",
        project.to_str().unwrap(),
        "--base-image",
        &base,
        "--no-index",
        "--find-links",
        wheels.to_str().unwrap(),
        "--image",
        &format!("{}/library/python:other", reg.host()),
        "--push",
        "--cache-dir",
        cache.to_str().unwrap(),
    ]);
    let (other_digest, other_size) =
        manifest_head(&reg.host(), "library/python", &digest_of(&other));
    let (digest, size) = manifest_head(&reg.host(), "library/python", "3.9-slim");
    // An index with the arm64 entry first and the fixture's amd64 manifest second.
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": other_digest, "size": other_size, "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest, "size": size, "platform": {"architecture": "amd64", "os": "linux"}}
        ]
    });
    let put = Command::new("curl")
        .args([
            "-sS",
            "-w",
            "\n%{http_code}",
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/vnd.oci.image.index.v1+json",
            "--data-binary",
        ])
        .arg(index.to_string())
        .arg(format!(
            "http://{}/v2/library/python/manifests/multi",
            reg.host()
        ))
        .output()
        .unwrap();
    assert!(
        text(&put.stdout).ends_with("201"),
        "PUT index ({:?}): {}{}",
        put.status,
        text(&put.stdout),
        text(&put.stderr)
    );
    let multi = format!("{}/library/python:multi", reg.host());
    let image = format!("{}/multi/app:v1", reg.host());
    let (reference, _) = vx_ok(&[
        "build",
        project.to_str().unwrap(),
        "--base-image",
        &multi,
        "--no-index",
        "--find-links",
        wheels.to_str().unwrap(),
        "--image",
        &image,
        "--push",
        "--cache-dir",
        tmp.path().join("cache").to_str().unwrap(),
    ]);
    let raw = skopeo_inspect_raw(&by_digest(&reference));
    assert_eq!(
        raw["annotations"]["org.opencontainers.image.base.digest"].as_str(),
        Some(digest.as_str()),
        "the amd64 manifest was chosen"
    );
    assert_eq!(
        raw["annotations"]["org.opencontainers.image.base.name"].as_str(),
        Some(multi.as_str())
    );
}

/// The digest and size the registry gives for a manifest (HEAD, Docker-Content-Digest).
fn manifest_head(host: &str, repository: &str, reference: &str) -> (String, u64) {
    let out = Command::new("curl")
        .args([
            "-sSfI",
            "-H",
            "Accept: application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json",
        ])
        .arg(format!(
            "http://{host}/v2/{repository}/manifests/{reference}"
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "HEAD {host}/{repository}/{reference}: {}",
        text(&out.stderr)
    );
    let headers = text(&out.stdout).to_ascii_lowercase();
    let header = |name: &str| {
        headers
            .lines()
            .find_map(|l| {
                l.strip_prefix(&format!("{name}: "))
                    .map(|v| v.trim().to_string())
            })
            .unwrap_or_else(|| panic!("no {name} header in {headers}"))
    };
    (
        header("docker-content-digest"),
        header("content-length").parse().unwrap(),
    )
}

#[test]
fn home_is_created_when_the_base_lacks_it_even_without_requirements() {
    let reg = Registry::start();
    let tmp = tempfile::tempdir().unwrap();
    // The fixture without /home (a whiteout layer made by umoci).
    let layout = tmp.path().join("nohome-layout");
    run(Command::new("cp").arg("-r").arg(base_layout()).arg(&layout));
    let bundle = tmp.path().join("bundle");
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:{BASE_TAG}", layout.display()))
        .arg(&bundle));
    std::fs::remove_dir_all(bundle.join("rootfs/home")).unwrap();
    run(Command::new("umoci")
        .args(["repack", "--image"])
        .arg(format!("{}:nohome", layout.display()))
        .arg(&bundle));
    let base = format!("{}/library/python:nohome", reg.host());
    skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        &format!("oci:{}:nohome", layout.display()),
        &format!("docker://{base}"),
    ]);
    let project = tmp.path().join("project");
    std::fs::create_dir(&project).unwrap();
    std::fs::write(
        project.join("train.py"),
        "import os\nprint('Training complete', os.path.isdir(os.environ['HOME']))\n",
    )
    .unwrap();
    let out = tmp.path().join("out");
    vx_ok(&[
        "build",
        project.to_str().unwrap(),
        "--base-image",
        &base,
        "--output",
        &format!("oci:{}", out.display()),
        "--cache-dir",
        tmp.path().join("cache").to_str().unwrap(),
    ]);
    let rootfs = unpack_layout(&out, "latest", &tmp.path().join("unpacked"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(rootfs.join("home"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o777
    );
    let config = skopeo_inspect_config(&format!("oci:{}:latest", out.display()));
    let run_out = run_entrypoint(&rootfs, &config);
    assert_eq!(
        text(&run_out.stdout).trim(),
        "Training complete True",
        "{}",
        text(&run_out.stderr)
    );
}
