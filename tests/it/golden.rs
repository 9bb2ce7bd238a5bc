//! Issue 3: the golden digest. A small base made here deterministically (this machine kind's
//! CPython 3.9 build, its pip, and the shared libraries it links — no debootstrap), tiny generated
//! wheels and a fixed project must give the manifest digest committed in testdata/golden.toml.
//! CI runs on another machine than the one that wrote it, so every green run is a cross-machine
//! check. When the output format changes on purpose, update the digest in the same commit and say
//! why; when the machine image's CPython or libraries change, `inputs` changes and the test says so.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;
use vxbuild::cache::Cache;
use vxbuild::digest::Digest;
use vxbuild::layer::{self, EntryKind, LayerEntry, LayerOptions};
use vxbuild::oci::{self, Descriptor};
use vxbuild::reference::Reference;
use vxbuild::registry::{ClientOptions, RegistryClient};

use crate::build::{digest_of, text, vx_ok};
use crate::support::*;

const PYTHON_HOME: &str = "/root/.pyenv/versions/3.9.18";

fn golden() -> (String, String) {
    let text = std::fs::read_to_string(repo_root().join("testdata/golden.toml"))
        .expect("testdata/golden.toml");
    let field = |k: &str| {
        text.lines()
            .find_map(|l| {
                l.strip_prefix(&format!("{k} = \""))
                    .map(|v| v.trim_end_matches('"').to_string())
            })
            .unwrap_or_else(|| panic!("testdata/golden.toml has no {k}"))
    };
    (field("inputs"), field("manifest"))
}

/// The shared libraries `paths` need, as ldd resolves them on this machine.
fn needed_libraries(paths: &[PathBuf]) -> BTreeSet<PathBuf> {
    let mut libs = BTreeSet::new();
    for p in paths {
        let out = Command::new("ldd").arg(p).output().unwrap();
        for line in text(&out.stdout).lines() {
            let line = line.trim();
            if let Some((_, rest)) = line.split_once("=> ") {
                if let Some(path) = rest
                    .split_whitespace()
                    .next()
                    .filter(|s| s.starts_with('/'))
                {
                    libs.insert(PathBuf::from(path));
                }
            } else if line.starts_with('/') {
                libs.insert(PathBuf::from(line.split_whitespace().next().unwrap()));
            }
        }
    }
    libs
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        let ft = e.file_type().unwrap();
        if ft.is_dir() {
            if [
                "test",
                "tests",
                "idle_test",
                "__pycache__",
                "tkinter",
                "turtledemo",
                "ensurepip",
                "lib2to3",
                "idlelib",
            ]
            .contains(&name.as_str())
                || name.starts_with("config-")
            {
                continue;
            }
            walk(&e.path(), out);
        } else if !name.ends_with(".pyc") && !name.starts_with("_tkinter") {
            out.push(e.path());
        }
    }
}

/// The base's entries: python, its standard library, pip, and the libraries they link.
fn base_entries() -> Vec<LayerEntry> {
    let home = Path::new(PYTHON_HOME);
    assert!(
        home.join("bin/python3.9").is_file(),
        "the golden base is made from {PYTHON_HOME}, which this machine kind provides"
    );
    let mut entries = Vec::new();
    let file = |path: String, source: PathBuf, mode: u32| {
        let size = std::fs::metadata(&source).unwrap().len();
        LayerEntry {
            path,
            mode,
            kind: EntryKind::File { source, size },
        }
    };
    entries.push(file(
        "usr/local/bin/python3.9".into(),
        home.join("bin/python3.9"),
        0o755,
    ));
    for link in ["python3", "python"] {
        entries.push(LayerEntry {
            path: format!("usr/local/bin/{link}"),
            mode: 0o777,
            kind: EntryKind::Symlink {
                target: "python3.9".into(),
            },
        });
    }
    // libpython where the binary's RUNPATH looks for it.
    let libpython = home.join("lib/libpython3.9.so.1.0");
    entries.push(file(
        format!(
            "{}/lib/libpython3.9.so.1.0",
            PYTHON_HOME.trim_start_matches('/')
        ),
        libpython.clone(),
        0o755,
    ));
    let stdlib_root = home.join("lib/python3.9");
    let mut stdlib = Vec::new();
    walk(&stdlib_root, &mut stdlib);
    let mut dynload = Vec::new();
    for p in stdlib {
        let rel = p
            .strip_prefix(&stdlib_root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if rel.starts_with("site-packages/")
            && !(rel.starts_with("site-packages/pip/") || rel.starts_with("site-packages/pip-"))
        {
            continue;
        }
        if rel.starts_with("lib-dynload/") {
            dynload.push(p.clone());
        }
        let exec = rel.ends_with(".so");
        entries.push(file(
            format!("usr/local/lib/python3.9/{rel}"),
            p,
            if exec { 0o755 } else { 0o644 },
        ));
    }
    let mut binaries = vec![home.join("bin/python3.9"), libpython];
    binaries.extend(dynload);
    for lib in needed_libraries(&binaries) {
        if lib.starts_with(home) {
            continue;
        }
        let real = std::fs::canonicalize(&lib).unwrap();
        entries.push(file(
            lib.to_string_lossy().trim_start_matches('/').to_string(),
            real,
            0o755,
        ));
    }
    for d in ["tmp", "etc", "home"] {
        entries.push(LayerEntry {
            path: d.into(),
            mode: if d == "tmp" { 0o1777 } else { 0o755 },
            kind: EntryKind::Dir,
        });
    }
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    entries.dedup_by(|a, b| a.path == b.path);
    entries
}

/// A fingerprint of the machine's files that went into the base.
fn inputs_fingerprint(entries: &[LayerEntry]) -> Digest {
    let mut bytes = Vec::new();
    for e in entries {
        bytes.extend_from_slice(e.path.as_bytes());
        bytes.push(0);
        if let EntryKind::File { source, .. } = &e.kind {
            bytes.extend_from_slice(
                vxbuild::digest::digest_file(source)
                    .unwrap()
                    .0
                    .as_str()
                    .as_bytes(),
            );
        }
        bytes.push(b'\n');
    }
    Digest::of(&bytes)
}

/// Push the base to `registry` with vxbuild's own client: one layer, a fixed config.
fn push_base(registry: &Registry, entries: Vec<LayerEntry>, cache: &Cache) -> String {
    let layer = layer::write_layer(entries, &LayerOptions::default(), cache).unwrap();
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {"Env": ["PATH=/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8"], "Cmd": ["python3"]},
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id.as_str()]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "vxbuild golden base"}]
    });
    let config_bytes = oci::canonical_json(&config);
    let config_digest = cache.put_blob_bytes(&config_bytes).unwrap();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": oci::OCI_MANIFEST,
        "config": Descriptor::new(oci::OCI_CONFIG, config_digest.clone(), config_bytes.len() as u64),
        "layers": [Descriptor::new(oci::OCI_LAYER_GZIP, layer.digest.clone(), layer.size)],
    });
    let reference = format!("{}/golden/python:3.9", registry.host());
    let target = Reference::parse(&reference).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = RegistryClient::new(ClientOptions::default()).unwrap();
        client
            .push_blob(
                &target,
                &layer.digest,
                layer.size,
                &cache.blob_path(&layer.digest),
                None,
            )
            .await
            .unwrap();
        client
            .push_blob(
                &target,
                &config_digest,
                config_bytes.len() as u64,
                &cache.blob_path(&config_digest),
                None,
            )
            .await
            .unwrap();
        client
            .put_manifest(
                &target,
                "3.9",
                oci::OCI_MANIFEST,
                oci::canonical_json(&manifest),
            )
            .await
            .unwrap();
    });
    reference
}

#[test]
fn golden_manifest_digest() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = Cache::open(tmp.path().join("base-cache")).unwrap();
    let entries = base_entries();
    let fingerprint = inputs_fingerprint(&entries);
    let reg = Registry::start();
    let base = push_base(&reg, entries, &cache);

    // Tiny wheels and a fixed project, created here byte for byte.
    let wheels = tmp.path().join("wheels");
    std::fs::create_dir_all(&wheels).unwrap();
    make_wheel(
        &wheels,
        "goldendep",
        "1.0",
        &[("goldendep/__init__.py", "ANSWER = 42\n")],
    );
    make_wheel_requiring(
        &wheels,
        "goldenapp",
        "0.1",
        &[("goldenapp/__init__.py", "from goldendep import ANSWER\n")],
        &["goldendep==1.0"],
    );
    let project = tmp.path().join("project");
    std::fs::create_dir_all(project.join("data")).unwrap();
    std::fs::write(
        project.join("train.py"),
        "from goldenapp import ANSWER\nprint('Training complete', ANSWER)\n",
    )
    .unwrap();
    std::fs::write(project.join("requirements.txt"), "goldenapp==0.1\n").unwrap();
    std::fs::write(project.join("data/labels.txt"), "cat\ndog\n").unwrap();
    let out = tmp.path().join("out");
    let (line, stderr) = vx_ok(&[
        "build",
        project.to_str().unwrap(),
        "--base-image",
        &base,
        "--no-index",
        "--find-links",
        wheels.to_str().unwrap(),
        "--no-lock",
        "--output",
        &format!("oci:{}", out.display()),
        "--cache-dir",
        tmp.path().join("cache").to_str().unwrap(),
    ]);
    // The image works.
    let rootfs = unpack_layout(&out, "latest", &tmp.path().join("unpacked"));
    let config = skopeo_inspect_config(&format!("oci:{}:latest", out.display()));
    let run = run_entrypoint(&rootfs, &config);
    assert_eq!(
        text(&run.stdout).trim(),
        "Training complete 42",
        "stderr: {}\nbuild: {stderr}",
        text(&run.stderr)
    );

    // The registry listens on a free port, which the base.name annotation records; everything else
    // is fixed. The golden value is the manifest's digest with that one port replaced.
    let manifest_digest = digest_of(&line);
    let raw = std::fs::read(
        out.join("blobs/sha256")
            .join(&manifest_digest["sha256:".len()..]),
    )
    .unwrap();
    let mut manifest: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(
        oci::canonical_json(&manifest),
        raw,
        "the manifest is canonical JSON"
    );
    let name = &mut manifest["annotations"]["org.opencontainers.image.base.name"];
    assert_eq!(name.as_str(), Some(base.as_str()));
    *name = json!("127.0.0.1:PORT/golden/python:3.9");
    let got = Digest::of(&oci::canonical_json(&manifest)).to_string();
    let (want_inputs, want_manifest) = golden();
    assert_eq!(
        fingerprint.as_str(),
        want_inputs,
        "this machine's CPython 3.9 / shared libraries differ from the ones testdata/golden.toml was made with \
         (the golden base is built from them); if the machine image changed, update both values in testdata/golden.toml \
         to inputs = \"{fingerprint}\" and manifest = \"{got}\" and say so in the commit"
    );
    assert_eq!(
        got, want_manifest,
        "the manifest digest differs from testdata/golden.toml for the same inputs: something that should not reach \
         the bytes did (or the format changed on purpose — then update the golden value with the reason)"
    );
}
