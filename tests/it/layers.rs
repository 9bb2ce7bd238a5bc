//! Issue 5: per-package layers and the layer cache. A code-only change runs no pip and reuses
//! every dependency layer; bumping one dependency uploads that package's layer and nothing else
//! of the dependencies; the layer set is the same however the cache stands.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;

use crate::build::{digest_of, offline_push_args, text, vx_ok};
use crate::support::*;

/// A project needing `big` (a wheel of ~2.7 MB of base64 random data: its layer cannot shrink
/// much) and four small packages; `big` comes in versions 1.0 and 2.0.
fn project_with_a_big_dependency(dir: &Path) -> (PathBuf, PathBuf) {
    let wheels = dir.join("wheels");
    std::fs::create_dir_all(&wheels).unwrap();
    for version in ["1.0", "2.0"] {
        let mut random = vec![0u8; 2 << 20];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut random))
            .unwrap();
        let blob = base64::engine::general_purpose::STANDARD.encode(&random);
        make_wheel(
            &wheels,
            "bigmodel",
            version,
            &[
                ("bigmodel/__init__.py", &format!("VERSION = '{version}'\n")),
                ("bigmodel/weights.b64", &blob),
            ],
        );
    }
    for (name, dep) in [
        ("alpha", ""),
        ("bravo", "alpha"),
        ("charlie", ""),
        ("delta", ""),
    ] {
        let code = format!("NAME = '{name}'\n");
        let module = format!("{name}/__init__.py");
        let requires: Vec<&str> = if dep.is_empty() { vec![] } else { vec![dep] };
        make_wheel_requiring(&wheels, name, "1.0", &[(&module, &code)], &requires);
    }
    let project = dir.join("project");
    std::fs::create_dir_all(&project).unwrap();
    std::fs::write(
        project.join("train.py"),
        "import bigmodel, bravo, charlie, delta\nprint('Training complete', bigmodel.VERSION)\n",
    )
    .unwrap();
    std::fs::write(
        project.join("requirements.txt"),
        "bigmodel==1.0\nbravo\ncharlie\ndelta\n",
    )
    .unwrap();
    (project, wheels)
}

/// What every test here starts from: a registry holding the base (its reference), and
/// [`project_with_a_big_dependency`] in a temporary folder (project, wheels).
fn setup() -> (Registry, String, tempfile::TempDir, PathBuf, PathBuf) {
    let reg = Registry::start();
    let base = reg.push_base();
    let tmp = tempfile::tempdir().unwrap();
    let (project, wheels) = project_with_a_big_dependency(tmp.path());
    (reg, base, tmp, project, wheels)
}

/// The layer digests of a pushed image, in order.
fn layers(reference: &str) -> Vec<String> {
    let m = skopeo_inspect_raw(&crate::build::by_digest(reference));
    m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect()
}

/// Every blob file in the registry's storage with its size.
fn stored_blobs(reg: &Registry) -> BTreeMap<PathBuf, u64> {
    let root = reg.storage.path().join("docker/registry/v2/blobs");
    let mut out = BTreeMap::new();
    let mut stack = vec![root];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n == "data") {
                out.insert(p.clone(), e.metadata().unwrap().len());
            }
        }
    }
    out
}

#[test]
fn a_code_only_change_runs_no_pip_and_keeps_every_dependency_layer() {
    let (reg, base, tmp, project, wheels) = setup();
    let cache = tmp.path().join("cache");
    let image = format!("{}/team/trainer:v1", reg.host());
    let args = offline_push_args(&project, &base, &wheels, &cache, &image);

    let (first, stderr1) = vx_ok(&args);
    assert!(stderr1.contains("Installing 5 wheel(s)"), "{stderr1}");
    let before = layers(&first);

    std::fs::write(
        project.join("train.py"),
        "import bigmodel, bravo, charlie, delta\nprint('Training complete, v2', bigmodel.VERSION)\n",
    )
    .unwrap();
    let mut verbose = args.clone();
    verbose.push("-v".into());
    let (second, stderr2) = vx_ok(&verbose);
    // No resolution (the lock is fresh), no pip install, no base unpacked: every dependency layer
    // from the cache.
    assert!(!stderr2.contains("Resolving dependencies"), "{stderr2}");
    assert!(!stderr2.contains("Installing"), "{stderr2}");
    assert!(!stderr2.contains("Unpacking"), "{stderr2}");
    // To the registry: the two new blobs (application layer, config), each PUT into an upload
    // session the first build left open (no round trip to open one), two sessions opened for the
    // next build, and the manifest; no HEAD (the cache knows what it has).
    let count = |stderr: &str, what: &str| {
        stderr
            .lines()
            .filter(|l| l.contains(&format!("debug: {what}")) && l.contains("/team/trainer/"))
            .count()
    };
    assert_eq!(count(&stderr2, "POST "), 2, "{stderr2}");
    assert_eq!(count(&stderr2, "PUT "), 3, "{stderr2}");
    assert_eq!(count(&stderr2, "HEAD "), 0, "{stderr2}");
    let carried = |stderr: &str| {
        stderr
            .lines()
            .filter(|l| l.ends_with(": into an upload session an earlier build opened"))
            .count()
    };
    assert_eq!(carried(&stderr2), 2, "{stderr2}");
    assert!(
        stderr2.contains("cached dependency layer(s) for 5 wheel(s)"),
        "{stderr2}"
    );
    // The registry holds the two sessions left for the next build, no more.
    let uploads = reg
        .storage
        .path()
        .join("docker/registry/v2/repositories/team/trainer/_uploads");
    assert_eq!(std::fs::read_dir(&uploads).unwrap().count(), 2);
    let after = layers(&second);
    assert_ne!(digest_of(&first), digest_of(&second));
    assert_eq!(before.len(), after.len());
    // Only the application layer (the last) changed.
    assert_eq!(before[..before.len() - 1], after[..after.len() - 1]);
    assert_ne!(before.last(), after.last());

    // The registry forgets the sessions left open (its purge of old uploads does this): the next
    // code change opens fresh ones and lands all the same.
    std::fs::remove_dir_all(&uploads).unwrap();
    std::fs::write(
        project.join("train.py"),
        "import bigmodel, bravo, charlie, delta\nprint('Training complete, v3', bigmodel.VERSION)\n",
    )
    .unwrap();
    let (third, stderr3) = vx_ok(&verbose);
    assert_eq!(carried(&stderr3), 2, "{stderr3}");
    assert_eq!(
        stderr3
            .lines()
            .filter(
                |l| l.contains("debug: the upload session given for sha256:")
                    && l.ends_with("is gone (404 Not Found); starting another")
            )
            .count(),
        2,
        "{stderr3}"
    );
    assert_eq!(count(&stderr3, "HEAD "), 0, "{stderr3}");
    let last = layers(&third);
    assert_eq!(before[..before.len() - 1], last[..last.len() - 1]);
    assert_ne!(after.last(), last.last());

    // And the images run the new code.
    for (reference, says) in [(&second, "v2"), (&third, "v3")] {
        let dir = tmp.path().join(format!("pulled-{says}"));
        skopeo(&[
            "copy",
            "--src-tls-verify=false",
            &format!("docker://{}", crate::build::by_digest(reference)),
            &format!("oci:{}:v1", dir.display()),
        ]);
        let rootfs = unpack_layout(&dir, "v1", &tmp.path().join(format!("rootfs-{says}")));
        let config = skopeo_inspect_config(&format!("oci:{}:v1", dir.display()));
        let out = run_entrypoint(&rootfs, &config);
        assert_stdout_contains(&out, &format!("Training complete, {says} 1.0"));
    }
}

#[test]
fn bumping_one_dependency_uploads_only_its_layer() {
    let (reg, base, tmp, project, wheels) = setup();
    let cache = tmp.path().join("cache");
    let image = format!("{}/team/trainer:v1", reg.host());
    let args = offline_push_args(&project, &base, &wheels, &cache, &image);

    let (first, _) = vx_ok(&args);
    let stored = stored_blobs(&reg);
    let before = layers(&first);

    std::fs::write(
        project.join("requirements.txt"),
        "bigmodel==2.0\nbravo\ncharlie\ndelta\n",
    )
    .unwrap();
    let (second, stderr) = vx_ok(&args);
    // Only the bumped wheel is installed.
    assert!(stderr.contains("Installing 1 wheel(s)"), "{stderr}");
    let new: BTreeMap<PathBuf, u64> = stored_blobs(&reg)
        .into_iter()
        .filter(|(p, _)| !stored.contains_key(p))
        .collect();
    let wheel = std::fs::metadata(wheels.join("bigmodel-2.0-py3-none-any.whl"))
        .unwrap()
        .len();
    let uploaded: u64 = new.values().sum();
    // The bumped layer, the application layer (requirements.txt changed), config and manifest.
    assert_eq!(new.len(), 4, "{new:#?}");
    assert!(
        uploaded as f64 <= 1.1 * wheel as f64 + (1 << 20) as f64,
        "uploaded {uploaded} bytes for a {wheel}-byte wheel"
    );
    let after = layers(&second);
    let changed: Vec<usize> = (0..after.len())
        .filter(|&i| before[i] != after[i])
        .collect();
    assert_eq!(changed.len(), 2, "{before:#?}\n{after:#?}");
    assert_eq!(*changed.last().unwrap(), after.len() - 1);
}

#[test]
fn the_layer_set_does_not_depend_on_the_cache() {
    let (reg, base, tmp, project, wheels) = setup();
    let image = format!("{}/team/trainer:v1", reg.host());
    // A cold cache, then a second cold cache with the lock the first build wrote, then warm.
    let push_with = |cache: &str| {
        vx_ok(&offline_push_args(
            &project,
            &base,
            &wheels,
            &tmp.path().join(cache),
            &image,
        ))
        .0
    };
    let (a, b, c) = (push_with("c1"), push_with("c2"), push_with("c2"));
    assert_eq!(digest_of(&a), digest_of(&b));
    assert_eq!(digest_of(&b), digest_of(&c));
    // Base layers, then bigmodel alone, the four small packages shared, the application.
    let base_layers = skopeo_inspect_raw(&base)["layers"]
        .as_array()
        .unwrap()
        .len();
    let l = layers(&a);
    let deps = l.len() - base_layers - 1;
    assert!((2..=5).contains(&deps), "{deps} dependency layers: {l:#?}");
    let config = skopeo_inspect_config(&crate::build::by_digest(&a));
    let history: Vec<String> = config["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|h| h["created_by"].as_str().map(String::from))
        .filter(|h| h.starts_with("vxbuild: pip install"))
        .collect();
    assert!(
        history.contains(&"vxbuild: pip install bigmodel==1.0".to_string()),
        "{history:#?}"
    );
}

#[test]
fn a_second_repository_gets_the_layers_mounted_from_the_first() {
    let (reg, base, tmp, project, wheels) = setup();
    let cache = tmp.path().join("cache");
    vx_ok(&offline_push_args(
        &project,
        &base,
        &wheels,
        &cache,
        &format!("{}/team/a:v1", reg.host()),
    ));
    let mut args = offline_push_args(
        &project,
        &base,
        &wheels,
        &cache,
        &format!("{}/team/b:v1", reg.host()),
    );
    args.push("-v".into());
    let (b, stderr) = vx_ok(&args);
    // Nothing uploaded: the cache remembers team/a has every blob and mounts them from there.
    assert!(!stderr.contains("Uploading"), "{stderr}");
    assert!(
        stderr.contains("&from=team/a (anonymous) -> 201"),
        "{stderr}"
    );
    skopeo_inspect_raw(&crate::build::by_digest(&b));
}

#[test]
fn a_blob_the_registry_lost_since_the_last_push_is_pushed_again() {
    let (reg, base, tmp, project, wheels) = setup();
    let cache = tmp.path().join("cache");
    let image = format!("{}/team/trainer:v1", reg.host());
    let args = offline_push_args(&project, &base, &wheels, &cache, &image);
    let (first, _) = vx_ok(&args);
    // The registry forgets the big dependency layer (as garbage collection would).
    let big = layers(&first)[skopeo_inspect_raw(&base)["layers"]
        .as_array()
        .unwrap()
        .len()]
    .clone();
    let status = std::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "DELETE",
            &format!("http://{}/v2/team/trainer/blobs/{big}", reg.host()),
        ])
        .output()
        .unwrap();
    assert_eq!(text(&status.stdout), "202", "delete {big}");

    std::fs::write(project.join("train.py"), "import bigmodel\nprint('v3')\n").unwrap();
    let (second, stderr) = vx_ok(&args);
    assert!(
        stderr.contains("refused the manifest; checking every blob again"),
        "{stderr}"
    );
    // Every blob is there again: skopeo copies (and verifies) the whole image.
    skopeo(&[
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{}", crate::build::by_digest(&second)),
        &format!("oci:{}:v1", tmp.path().join("copy").display()),
    ]);
}

#[test]
fn zstd_layers_push_pull_and_run_with_one_digest() {
    let (reg, base, tmp, project, wheels) = setup();
    let image = format!("{}/team/zstd:v1", reg.host());
    let mut a_args = offline_push_args(&project, &base, &wheels, &tmp.path().join("c1"), &image);
    a_args.extend(["--compression".into(), "zstd".into()]);
    let (a, _) = vx_ok(&a_args);
    // Another cold cache, one job: the same bytes.
    let mut b_args = offline_push_args(&project, &base, &wheels, &tmp.path().join("c2"), &image);
    b_args.extend(["--compression", "zstd", "--jobs", "1"].map(String::from));
    let (b, _) = vx_ok(&b_args);
    assert_eq!(digest_of(&a), digest_of(&b));

    let manifest = skopeo_inspect_raw(&crate::build::by_digest(&a));
    let base_layers = skopeo_inspect_raw(&base)["layers"]
        .as_array()
        .unwrap()
        .len();
    let types: Vec<&str> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["mediaType"].as_str().unwrap())
        .collect();
    assert!(
        types[..base_layers]
            .iter()
            .all(|t| *t == "application/vnd.oci.image.layer.v1.tar+gzip"),
        "{types:?}"
    );
    assert!(
        types[base_layers..]
            .iter()
            .all(|t| *t == "application/vnd.oci.image.layer.v1.tar+zstd"),
        "{types:?}"
    );
    // gzip and zstd builds of the same inputs are different images.
    let (g, _) = vx_ok(&offline_push_args(
        &project,
        &base,
        &wheels,
        &tmp.path().join("c1"),
        &format!("{}/team/gzip:v1", reg.host()),
    ));
    assert_ne!(digest_of(&g), digest_of(&a));

    // skopeo (containers/image) verifies every blob as it copies and decodes the zstd layers to
    // re-compress them as gzip for umoci 0.4, which reads no zstd; the image runs.
    let dir = tmp.path().join("pulled");
    skopeo(&[
        "copy",
        "--src-tls-verify=false",
        "--dest-compress",
        "--dest-compress-format",
        "gzip",
        &format!("docker://{}", crate::build::by_digest(&a)),
        &format!("oci:{}:v1", dir.display()),
    ]);
    let rootfs = unpack_layout(&dir, "v1", &tmp.path().join("rootfs"));
    let config = skopeo_inspect_config(&format!("oci:{}:v1", dir.display()));
    let out = run_entrypoint(&rootfs, &config);
    assert_stdout_contains(&out, "Training complete 1.0");
}

/// Every scratch folder a `-v` build names in /dev/shm.
fn memory_scratch_named(stderr: &str) -> Vec<PathBuf> {
    stderr
        .split_whitespace()
        .filter(|w| w.starts_with("/dev/shm/vxbuild-scratch-"))
        .map(PathBuf::from)
        .collect()
}

/// The base's root filesystem and pip's staging roots go in memory when they fit and into the
/// cache with `--scratch disk`: one image either way, and nothing left in /dev/shm after a build
/// that worked or one that failed.
#[test]
fn scratch_in_memory_or_on_disk_gives_one_image_and_leaves_nothing_behind() {
    let (_reg, base, tmp, project, wheels) = setup(); // _reg serves the base
    let (c1, c2) = (tmp.path().join("c1"), tmp.path().join("c2"));
    let (memory, memory_log) = crate::build::offline_build(
        &project,
        &base,
        &wheels,
        &c1,
        &tmp.path().join("out-memory"),
        &["-v"],
    );
    let (disk, disk_log) = crate::build::offline_build(
        &project,
        &base,
        &wheels,
        &c2,
        &tmp.path().join("out-disk"),
        &["-v", "--no-lock", "--scratch", "disk"],
    );
    assert_eq!(digest_of(&memory), digest_of(&disk));

    let shm_is_tmpfs = Command::new("stat")
        .args(["-f", "-c", "%T", "/dev/shm"])
        .output()
        .map(|o| text(&o.stdout).trim() == "tmpfs")
        .unwrap_or(false);
    let in_memory = memory_scratch_named(&memory_log);
    if shm_is_tmpfs {
        // The rootfs and at least one staging root.
        assert!(in_memory.len() >= 2, "{memory_log}");
        assert!(
            memory_log.contains("in memory: /dev/shm/vxbuild-scratch-rootfs-"),
            "{memory_log}"
        );
    }
    for p in &in_memory {
        assert!(!p.exists(), "{} is left behind", p.display());
    }
    // On disk: nothing in memory, the rootfs kept in the cache for the next build that runs pip.
    assert!(memory_scratch_named(&disk_log).is_empty(), "{disk_log}");
    assert!(disk_log.contains("into the cache"), "{disk_log}");
    // pip's own bytecode is kept per base, for the next pip run (the image is the same: above).
    let pycs = Command::new("find")
        .args([c1.join("pycache-v1").to_str().unwrap(), "-name", "*.pyc"])
        .output()
        .unwrap();
    assert!(
        text(&pycs.stdout).contains("/pip/"),
        "{}",
        text(&pycs.stdout)
    );
    let kept = |c: &Path| std::fs::read_dir(c.join("rootfs-v1")).unwrap().count();
    assert_eq!(kept(&c2), 1);
    assert_eq!(kept(&c1), if shm_is_tmpfs { 0 } else { 1 });
    // A warm build with the lock the first build wrote and every layer cached unpacks nothing.
    let (again, again_log) = crate::build::offline_build(
        &project,
        &base,
        &wheels,
        &c1,
        &tmp.path().join("out-again"),
        &["-v"],
    );
    assert_eq!(digest_of(&again), digest_of(&memory));
    assert!(!again_log.contains("Unpacking"), "{again_log}");

    // A build that fails after the rootfs was unpacked (no such package) removes it too.
    std::fs::write(project.join("requirements.txt"), "no-such-package==1.0\n").unwrap();
    let failed = crate::build::offline_build_output(
        &project,
        &base,
        &wheels,
        &tmp.path().join("c3"),
        &tmp.path().join("out-failed"),
        &["-v", "--no-lock"],
    );
    assert!(!failed.status.success());
    let log = text(&failed.stderr);
    assert!(log.contains("no-such-package"), "{log}");
    if shm_is_tmpfs {
        assert!(!memory_scratch_named(&log).is_empty(), "{log}");
    }
    for p in memory_scratch_named(&log) {
        assert!(!p.exists(), "{} is left behind", p.display());
    }
}

/// SIGINT in the middle of a build (while the base is being unpacked in memory): exit 130, no
/// image written, and no scratch folder left in /dev/shm.
#[test]
fn an_interrupted_build_leaves_no_scratch_and_no_image() {
    use std::io::BufRead;
    let (_reg, base, tmp, project, wheels) = setup(); // _reg serves the base
    let out = tmp.path().join("out");
    let args = crate::build::offline_build_args(
        &project,
        &base,
        &wheels,
        &tmp.path().join("cache"),
        &out,
        &["-v"],
    );
    let mut child = spawn_vxbuild(&args);
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut log = String::new();
    // Interrupt as soon as the first scratch folder is named (the rootfs, before it is complete).
    loop {
        let mut line = String::new();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "no scratch folder named:\n{log}"
        );
        log.push_str(&line);
        if line.contains("debug: unpacking") {
            break;
        }
    }
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    std::io::Read::read_to_string(&mut stderr, &mut log).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{log}");
    assert!(log.contains("error: interrupted"), "{log}");
    let named = memory_scratch_named(&log);
    for p in &named {
        assert!(!p.exists(), "{} is left behind:\n{log}", p.display());
    }
    // No image: the layout is written last.
    assert!(!out.join("index.json").exists(), "{log}");
}
