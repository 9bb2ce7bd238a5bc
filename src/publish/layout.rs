//! Stage 5, locally: an OCI image layout folder, or an OCI archive (that layout as one tar).

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::cache::Cache;
use crate::digest::Digest;
use crate::image::BuiltImage;
use crate::oci::{self, Descriptor};

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("failed to write the OCI layout {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} exists but is not an OCI image layout (its index.json cannot be read)", path.display())]
    NotALayout { path: PathBuf },
    #[error("blob {digest} is missing from the cache")]
    MissingBlob { digest: Digest },
}

fn werr(path: &Path) -> impl FnOnce(io::Error) -> LayoutError + '_ {
    move |source| LayoutError::Write {
        path: path.to_path_buf(),
        source,
    }
}

/// Every blob of the image, with where its bytes are (config and manifest are put in the cache first).
fn image_blobs(image: &BuiltImage, cache: &Cache) -> Result<Vec<(Digest, PathBuf)>, LayoutError> {
    let mut blobs = Vec::new();
    for bytes in [&image.config, &image.manifest] {
        let d = cache
            .put_blob_bytes(bytes)
            .map_err(|e| LayoutError::Write {
                path: cache.root().into(),
                source: io::Error::other(e.to_string()),
            })?;
        blobs.push((d.clone(), cache.blob_path(&d)));
    }
    for l in &image.layers {
        if !cache.has_blob(&l.digest, Some(l.size)) {
            return Err(LayoutError::MissingBlob {
                digest: l.digest.clone(),
            });
        }
        blobs.push((l.digest.clone(), cache.blob_path(&l.digest)));
    }
    blobs.sort();
    blobs.dedup_by(|a, b| a.0 == b.0);
    Ok(blobs)
}

fn manifest_descriptor(image: &BuiltImage, tag: &str) -> Descriptor {
    let mut d = Descriptor::new(
        oci::OCI_MANIFEST,
        image.manifest_digest.clone(),
        image.manifest.len() as u64,
    );
    d.annotations = Some([(oci::ANNOTATION_REF_NAME.to_string(), tag.to_string())].into());
    d
}

/// Write (or add to) an OCI layout at `dir`, the manifest tagged `tag`. Blobs go in first; index.json
/// is replaced atomically last, so a failure never leaves the tag pointing at a partial image.
pub fn write_layout(
    image: &BuiltImage,
    cache: &Cache,
    dir: &Path,
    tag: &str,
) -> Result<(), LayoutError> {
    let blobs_dir = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs_dir).map_err(werr(&blobs_dir))?;
    let index_path = dir.join("index.json");
    let mut manifests: Vec<Value> = match fs::read(&index_path) {
        Ok(b) => {
            let v: Value = serde_json::from_slice(&b)
                .map_err(|_| LayoutError::NotALayout { path: dir.into() })?;
            v.get("manifests")
                .and_then(Value::as_array)
                .cloned()
                .ok_or_else(|| LayoutError::NotALayout { path: dir.into() })?
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            return Err(LayoutError::Write {
                path: index_path,
                source: e,
            });
        }
    };
    for (digest, src) in image_blobs(image, cache)? {
        let dest = blobs_dir.join(digest.hex());
        if dest.is_file() {
            continue;
        }
        let tmp = blobs_dir.join(format!(".tmp-{}", digest.hex()));
        // A hard link when the layout is on the cache's filesystem; a copy otherwise.
        if fs::hard_link(&src, &tmp).is_err() {
            fs::copy(&src, &tmp).map_err(werr(&tmp))?;
        }
        fs::rename(&tmp, &dest).map_err(werr(&dest))?;
    }
    let layout_file = dir.join("oci-layout");
    fs::write(&layout_file, br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(werr(&layout_file))?;
    manifests.retain(|m| {
        m.pointer("/annotations/org.opencontainers.image.ref.name")
            .and_then(Value::as_str)
            != Some(tag)
    });
    manifests.push(serde_json::to_value(manifest_descriptor(image, tag)).expect("json"));
    manifests.sort_by_key(|m| {
        m.pointer("/annotations/org.opencontainers.image.ref.name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    });
    let index = json!({"schemaVersion": 2, "mediaType": oci::OCI_INDEX, "manifests": manifests});
    let tmp = dir.join(".index.json.tmp");
    fs::write(&tmp, oci::canonical_json(&index)).map_err(werr(&tmp))?;
    fs::rename(&tmp, &index_path).map_err(werr(&index_path))?;
    Ok(())
}

/// Write an OCI archive: a deterministic tar of a one-image layout, replaced atomically.
pub fn write_archive(
    image: &BuiltImage,
    cache: &Cache,
    file: &Path,
    tag: &str,
) -> Result<(), LayoutError> {
    let parent = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(werr(parent))?;
    let tmp = tempfile::Builder::new()
        .prefix(".vxbuild-archive-")
        .tempfile_in(parent)
        .map_err(werr(parent))?;
    let index = json!({"schemaVersion": 2, "mediaType": oci::OCI_INDEX, "manifests": [manifest_descriptor(image, tag)]});
    let mut tar = tar::Builder::new(io::BufWriter::new(tmp));
    let dir_entry = |tar: &mut tar::Builder<_>, path: &str| -> io::Result<()> {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_mtime(0);
        h.set_size(0);
        tar.append_data(&mut h, path, io::empty())
    };
    let file_entry = |tar: &mut tar::Builder<_>,
                      path: &str,
                      size: u64,
                      r: &mut dyn io::Read|
     -> io::Result<()> {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_size(size);
        tar.append_data(&mut h, path, r)
    };
    let e = werr(file);
    (|| -> io::Result<()> {
        dir_entry(&mut tar, "blobs/")?;
        dir_entry(&mut tar, "blobs/sha256/")?;
        for (digest, src) in
            image_blobs(image, cache).map_err(|e| io::Error::other(e.to_string()))?
        {
            let mut f = fs::File::open(&src)?;
            let size = f.metadata()?.len();
            file_entry(
                &mut tar,
                &format!("blobs/sha256/{}", digest.hex()),
                size,
                &mut f,
            )?;
        }
        let idx = oci::canonical_json(&index);
        file_entry(&mut tar, "index.json", idx.len() as u64, &mut &idx[..])?;
        let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
        file_entry(
            &mut tar,
            "oci-layout",
            layout.len() as u64,
            &mut &layout[..],
        )?;
        Ok(())
    })()
    .map_err(|source| LayoutError::Write {
        path: file.into(),
        source,
    })?;
    let mut w = tar.into_inner().map_err(werr(file))?;
    w.flush().map_err(werr(file))?;
    let tmp = w.into_inner().map_err(|e| LayoutError::Write {
        path: file.into(),
        source: e.into_error(),
    })?;
    tmp.persist(file).map_err(|err| e(err.error))?;
    Ok(())
}
