//! Stage 4: the image config and manifest, as canonical JSON.
//!
//! The base's config is kept field for field (unknown fields too), with autopackaging's container
//! contract applied on top: WorkingDir /usr/app, HOME=/home, PYTHONDONTWRITEBYTECODE=1,
//! PYTHONUNBUFFERED=1, the entrypoint, Cmd cleared.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::digest::Digest;
use crate::oci::{self, Descriptor, Manifest};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("the base image's config is not a JSON object with a rootfs.diff_ids list")]
    BadBaseConfig,
    #[error("the base image has {layers} layers but its config lists {diff_ids} diff_ids")]
    LayerCountMismatch { layers: usize, diff_ids: usize },
}

/// The container contract vxbuild applies (autopackaging's).
#[derive(Debug, Clone)]
pub struct Contract {
    pub entrypoint: Vec<String>,
    pub working_dir: String,
    pub env: Vec<(String, String)>,
}

impl Contract {
    pub fn autopackaging(entrypoint: Vec<String>) -> Self {
        Contract {
            entrypoint,
            working_dir: "/usr/app".into(),
            env: vec![
                ("HOME".into(), "/home".into()),
                ("PYTHONDONTWRITEBYTECODE".into(), "1".into()),
                ("PYTHONUNBUFFERED".into(), "1".into()),
            ],
        }
    }
}

/// A layer vxbuild wrote, with what made it (for the history).
#[derive(Debug, Clone)]
pub struct NewLayer {
    pub descriptor: Descriptor,
    pub diff_id: Digest,
    pub created_by: String,
}

/// The base image as stage 1 resolved it.
pub struct BaseParts<'a> {
    pub config: &'a Value,
    pub layers: &'a [Descriptor],
    pub name: &'a str,
    pub manifest_digest: &'a Digest,
}

#[derive(Debug, Clone)]
pub struct BuiltImage {
    pub config: Vec<u8>,
    pub config_descriptor: Descriptor,
    pub manifest: Vec<u8>,
    pub manifest_digest: Digest,
    /// Every layer, base first.
    pub layers: Vec<Descriptor>,
    /// How many of `layers` come from the base.
    pub base_layer_count: usize,
}

/// Pick the entrypoint for a script or module, as autopackaging does.
pub fn entrypoint_for(script: Option<&str>, module: Option<&str>) -> Vec<String> {
    match (script, module) {
        (_, Some(m)) => vec!["python".into(), "-m".into(), m.into()],
        (Some(s), None) if s.ends_with(".py") => vec!["python".into(), s.into()],
        (Some(s), None) => vec!["/bin/bash".into(), s.into()],
        (None, None) => Vec::new(),
    }
}

/// Build the config and manifest. `created` is an RFC 3339 time (from SOURCE_DATE_EPOCH).
pub fn assemble(
    base: &BaseParts<'_>,
    new_layers: &[NewLayer],
    contract: &Contract,
    created: &str,
) -> Result<BuiltImage, ImageError> {
    let mut config = base.config.clone();
    let obj = config.as_object_mut().ok_or(ImageError::BadBaseConfig)?;
    let diff_ids = obj
        .get("rootfs")
        .and_then(|r| r.get("diff_ids"))
        .and_then(Value::as_array)
        .ok_or(ImageError::BadBaseConfig)?
        .len();
    if diff_ids != base.layers.len() {
        return Err(ImageError::LayerCountMismatch {
            layers: base.layers.len(),
            diff_ids,
        });
    }
    obj.insert("created".into(), json!(created));
    // Leftovers describing the container that built the base, not this image.
    obj.remove("container");
    obj.remove("container_config");
    obj.remove("docker_version");

    let cfg = obj.entry("config").or_insert_with(|| json!({}));
    if !cfg.is_object() {
        *cfg = json!({});
    }
    let cfg = cfg.as_object_mut().expect("object");
    let mut env: Vec<String> = cfg
        .get("Env")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    for (k, v) in &contract.env {
        let entry = format!("{k}={v}");
        match env
            .iter_mut()
            .find(|e| e.split_once('=').map(|(ek, _)| ek) == Some(k.as_str()))
        {
            Some(e) => *e = entry,
            None => env.push(entry),
        }
    }
    cfg.insert("Env".into(), json!(env));
    cfg.insert("WorkingDir".into(), json!(contract.working_dir));
    cfg.insert("Entrypoint".into(), json!(contract.entrypoint));
    cfg.remove("Cmd");

    let rootfs = obj
        .get_mut("rootfs")
        .and_then(Value::as_object_mut)
        .ok_or(ImageError::BadBaseConfig)?;
    let ids = rootfs
        .get_mut("diff_ids")
        .and_then(Value::as_array_mut)
        .ok_or(ImageError::BadBaseConfig)?;
    for l in new_layers {
        ids.push(json!(l.diff_id.as_str()));
    }
    let history = obj.entry("history").or_insert_with(|| json!([]));
    if !history.is_array() {
        *history = json!([]);
    }
    let history = history.as_array_mut().expect("array");
    for l in new_layers {
        history.push(json!({"created": created, "created_by": l.created_by, "comment": "vxbuild"}));
    }
    history.push(json!({
        "created": created,
        "created_by": format!(
            "vxbuild: WORKDIR {} ENV {} ENTRYPOINT {}",
            contract.working_dir,
            contract.env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" "),
            serde_json::to_string(&contract.entrypoint).expect("json")
        ),
        "comment": "vxbuild",
        "empty_layer": true
    }));

    let config_bytes = oci::canonical_json(&config);
    let config_descriptor = Descriptor::new(
        oci::OCI_CONFIG,
        Digest::of(&config_bytes),
        config_bytes.len() as u64,
    );
    let mut layers: Vec<Descriptor> = base.layers.iter().map(as_oci_layer).collect();
    layers.extend(new_layers.iter().map(|l| l.descriptor.clone()));
    let mut annotations = BTreeMap::new();
    annotations.insert(oci::ANNOTATION_BASE_NAME.to_string(), base.name.to_string());
    annotations.insert(
        oci::ANNOTATION_BASE_DIGEST.to_string(),
        base.manifest_digest.to_string(),
    );
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(oci::OCI_MANIFEST.into()),
        config: config_descriptor.clone(),
        layers: layers.clone(),
        annotations: Some(annotations),
    };
    let manifest_bytes = oci::canonical_json(&manifest);
    Ok(BuiltImage {
        manifest_digest: Digest::of(&manifest_bytes),
        config: config_bytes,
        config_descriptor,
        manifest: manifest_bytes,
        layers,
        base_layer_count: base.layers.len(),
    })
}

/// A base layer descriptor under its OCI media type (same bytes, so same digest).
fn as_oci_layer(d: &Descriptor) -> Descriptor {
    let media_type = match d.media_type.as_str() {
        oci::DOCKER_LAYER_GZIP => oci::OCI_LAYER_GZIP.to_string(),
        other => other.to_string(),
    };
    Descriptor {
        media_type,
        ..d.clone()
    }
}

/// RFC 3339 UTC time for a Unix timestamp (no external time crate needed).
pub fn rfc3339(epoch: u64) -> String {
    let days = (epoch / 86_400) as i64;
    let secs = epoch % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        (secs % 3600) / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base_config() -> Value {
        json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Env": ["PATH=/usr/local/bin:/usr/bin", "HOME=/root", "LANG=C.UTF-8"], "Cmd": ["python3"]},
            "rootfs": {"type": "layers", "diff_ids": ["sha256:0000000000000000000000000000000000000000000000000000000000000000"]},
            "history": [{"created_by": "debootstrap"}],
            "container_config": {"Hostname": "abc"}
        })
    }

    #[test]
    fn entrypoints_follow_autopackaging() {
        assert_eq!(
            entrypoint_for(Some("train.py"), None),
            ["python", "train.py"]
        );
        assert_eq!(
            entrypoint_for(Some("trainer/task.py"), None),
            ["python", "trainer/task.py"]
        );
        assert_eq!(
            entrypoint_for(None, Some("trainer.task")),
            ["python", "-m", "trainer.task"]
        );
        assert_eq!(
            entrypoint_for(Some("run.sh"), None),
            ["/bin/bash", "run.sh"]
        );
    }

    #[test]
    fn contract_applied_and_base_kept() {
        let cfg = base_config();
        let base_layer = Descriptor::new(oci::DOCKER_LAYER_GZIP, Digest::of(b"l"), 1);
        let base = BaseParts {
            config: &cfg,
            layers: std::slice::from_ref(&base_layer),
            name: "docker.io/library/python:3.9-slim",
            manifest_digest: &Digest::of(b"m"),
        };
        let new = NewLayer {
            descriptor: Descriptor::new(oci::OCI_LAYER_GZIP, Digest::of(b"n"), 2),
            diff_id: Digest::of(b"d"),
            created_by: "vxbuild: COPY . /usr/app".into(),
        };
        let img = assemble(
            &base,
            &[new],
            &Contract::autopackaging(entrypoint_for(Some("train.py"), None)),
            &rfc3339(0),
        )
        .unwrap();
        let c: Value = serde_json::from_slice(&img.config).unwrap();
        assert_eq!(c["created"], "1970-01-01T00:00:00Z");
        assert_eq!(c["config"]["WorkingDir"], "/usr/app");
        assert_eq!(c["config"]["Entrypoint"], json!(["python", "train.py"]));
        assert!(c["config"].get("Cmd").is_none());
        assert_eq!(
            c["config"]["Env"],
            json!([
                "PATH=/usr/local/bin:/usr/bin",
                "HOME=/home",
                "LANG=C.UTF-8",
                "PYTHONDONTWRITEBYTECODE=1",
                "PYTHONUNBUFFERED=1"
            ])
        );
        assert_eq!(c["rootfs"]["diff_ids"].as_array().unwrap().len(), 2);
        assert!(c.get("container_config").is_none());
        let non_empty = c["history"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|h| h.get("empty_layer").is_none())
            .count();
        assert_eq!(non_empty, 2);
        let m: Value = serde_json::from_slice(&img.manifest).unwrap();
        assert_eq!(m["mediaType"], oci::OCI_MANIFEST);
        assert_eq!(m["layers"][0]["mediaType"], oci::OCI_LAYER_GZIP);
        assert_eq!(
            m["annotations"][oci::ANNOTATION_BASE_NAME],
            "docker.io/library/python:3.9-slim"
        );
        assert_eq!(img.manifest_digest, Digest::of(&img.manifest));
        // Canonical: re-serializing gives the same bytes.
        assert_eq!(oci::canonical_json(&m), img.manifest);
        // Same inputs, same bytes.
        let again = assemble(
            &base,
            &[NewLayer {
                descriptor: Descriptor::new(oci::OCI_LAYER_GZIP, Digest::of(b"n"), 2),
                diff_id: Digest::of(b"d"),
                created_by: "vxbuild: COPY . /usr/app".into(),
            }],
            &Contract::autopackaging(entrypoint_for(Some("train.py"), None)),
            &rfc3339(0),
        )
        .unwrap();
        assert_eq!(again.manifest_digest, img.manifest_digest);
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn base_layer_count_checked() {
        let cfg = base_config();
        let base = BaseParts {
            config: &cfg,
            layers: &[],
            name: "x",
            manifest_digest: &Digest::of(b"m"),
        };
        assert!(matches!(
            assemble(&base, &[], &Contract::autopackaging(vec![]), "t"),
            Err(ImageError::LayerCountMismatch { .. })
        ));
    }
}
