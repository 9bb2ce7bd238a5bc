//! The registry client against a real `docker-registry` (plain HTTP on loopback, with and without
//! htpasswd auth), and against a small in-test server for the anonymous bearer-token flow and
//! storage redirects.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use vxbuild::cache::Cache;
use vxbuild::digest::{Digest, digest_file};
use vxbuild::oci::{self, Descriptor, Manifest};
use vxbuild::reference::Reference;
use vxbuild::registry::{ClientOptions, RegistryClient, RegistryError};

use crate::support::Registry;

/// A client that reads credentials only from `config` (a path that may not exist).
fn client(config: &Path) -> RegistryClient {
    RegistryClient::new(ClientOptions {
        insecure_registries: Vec::new(),
        docker_config: Some(config.to_path_buf()),
        max_concurrent: 4,
        trace: None,
        known_schemes: Vec::new(),
    })
    .expect("client")
}

fn reference(s: &str) -> Reference {
    Reference::parse(s).expect("valid reference")
}

/// `len` pseudo-random bytes (xorshift; no two blobs of a test run alike).
fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
        | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Write `bytes` to a file in `dir`; returns its path, digest and size.
fn blob_file(dir: &Path, name: &str, bytes: &[u8]) -> (PathBuf, Digest, u64) {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    let (d, n) = digest_file(&path).unwrap();
    (path, d, n)
}

/// An OCI manifest for one config and one layer.
fn manifest_for(config: &Descriptor, layer: &Descriptor) -> Vec<u8> {
    oci::canonical_json(&Manifest {
        schema_version: 2,
        media_type: Some(oci::OCI_MANIFEST.into()),
        config: config.clone(),
        layers: vec![layer.clone()],
        annotations: None,
    })
}

/// The full error chain, as `{:#}` would print it with anyhow.
fn chain(e: &RegistryError) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(x) = src {
        s.push_str(": ");
        s.push_str(&x.to_string());
        src = x.source();
    }
    s
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn push_mount_tag_and_pull_against_a_real_registry() {
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let c = client(&work.path().join("no-config.json"));
    let app = reference(&format!("{}/vx/app:v1", reg.host()));
    let other = reference(&format!("{}/vx/other", reg.host()));

    // A layer of a few MB, pushed monolithically.
    let (layer_path, layer_digest, layer_size) =
        blob_file(work.path(), "layer", &random_bytes(6 << 20, 1));
    assert!(!c.blob_exists(&app, &layer_digest).await.unwrap());
    let before = reg.blob_count();
    c.push_blob(&app, &layer_digest, layer_size, &layer_path, None)
        .await
        .unwrap();
    assert!(c.blob_exists(&app, &layer_digest).await.unwrap());
    assert_eq!(reg.blob_count(), before + 1);

    // Into a session started ahead of the blob: the same result.
    let session = c.start_upload(&app).await.unwrap();
    let (small_path, small_digest, small_size) =
        blob_file(work.path(), "small", &random_bytes(4096, 2));
    c.push_blob(&app, &small_digest, small_size, &small_path, Some(session))
        .await
        .unwrap();
    assert!(c.blob_exists(&app, &small_digest).await.unwrap());
    assert_eq!(reg.blob_count(), before + 2);

    // Mount it into another repository: no upload, the registry links it.
    assert!(!c.blob_exists(&other, &layer_digest).await.unwrap());
    assert!(
        c.mount_blob(&other, &layer_digest, &app.repository)
            .await
            .unwrap()
    );
    assert!(c.blob_exists(&other, &layer_digest).await.unwrap());
    assert_eq!(reg.blob_count(), before + 2);
    // A blob the source does not have cannot be mounted: the registry opens an upload instead.
    let absent = Digest::of(b"not in any repository");
    assert!(
        !c.mount_blob(&other, &absent, &app.repository)
            .await
            .unwrap()
    );
    assert!(!c.blob_exists(&other, &absent).await.unwrap());

    // Config + manifest under a tag.
    let config_bytes =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let (config_path, config_digest, config_size) = blob_file(work.path(), "config", config_bytes);
    c.push_blob(&app, &config_digest, config_size, &config_path, None)
        .await
        .unwrap();
    let config = Descriptor::new(oci::OCI_CONFIG, config_digest.clone(), config_size);
    let layer = Descriptor::new(oci::OCI_LAYER_GZIP, layer_digest.clone(), layer_size);
    let manifest = manifest_for(&config, &layer);
    let pushed = c
        .put_manifest(&app, "v1", oci::OCI_MANIFEST, manifest.clone())
        .await
        .unwrap();
    assert_eq!(pushed, Digest::of(&manifest));

    // Pull it back by tag and by digest; both verified.
    let by_tag = c.get_manifest(&app).await.unwrap();
    assert_eq!(by_tag.bytes, manifest);
    assert_eq!(by_tag.digest, pushed);
    assert_eq!(by_tag.media_type, oci::OCI_MANIFEST);
    let pinned = app.with_digest(pushed.clone());
    let by_digest = c.get_manifest(&pinned).await.unwrap();
    assert_eq!(by_digest.bytes, manifest);
    // Pushing by digest works too, and a digest that is not the body's is refused locally.
    c.put_manifest(&other, pushed.as_str(), oci::OCI_MANIFEST, manifest.clone())
        .await
        .unwrap_err(); // `other` lacks the config blob: the registry says so
    let err = c
        .put_manifest(&app, absent.as_str(), oci::OCI_MANIFEST, manifest.clone())
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::DigestMismatch { .. }), "{err}");

    // A missing tag: the error names the reference, the status and the registry's words.
    let missing = reference(&format!("{}/vx/app:nope", reg.host()));
    let err = c.get_manifest(&missing).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "failed to fetch manifest for {}/vx/app:nope: 404 Not Found (MANIFEST_UNKNOWN: manifest unknown)",
            reg.host()
        )
    );

    // Blobs into the cache, verified while streaming.
    let cache = Cache::open(work.path().join("cache")).unwrap();
    let got = c.fetch_blob(&app, &layer, &cache).await.unwrap();
    assert_eq!(got, cache.blob_path(&layer_digest));
    assert_eq!(
        digest_file(&got).unwrap(),
        (layer_digest.clone(), layer_size)
    );
    // Already cached: returned without asking (the registry is gone after this).
    let got_again = c.fetch_blob(&app, &layer, &cache).await.unwrap();
    assert_eq!(got_again, got);

    // A descriptor whose size is wrong is refused before anything is written.
    let wrong_size = Descriptor::new(oci::OCI_CONFIG, config_digest.clone(), config_size + 1);
    let err = c.fetch_blob(&app, &wrong_size, &cache).await.unwrap_err();
    assert!(matches!(err, RegistryError::SizeMismatch { .. }), "{err}");
    assert!(!cache.has_blob(&config_digest, None));
    assert!(files_in(&cache.tmp_dir()).is_empty());

    // Content that does not match its descriptor (tampered storage) is rejected, nothing kept.
    let data = reg
        .storage
        .path()
        .join("docker/registry/v2/blobs/sha256")
        .join(&config_digest.hex()[..2])
        .join(config_digest.hex())
        .join("data");
    let mut tampered = config_bytes.to_vec();
    tampered[0] = b'[';
    std::fs::write(&data, &tampered).unwrap();
    let err = c.fetch_blob(&app, &config, &cache).await.unwrap_err();
    match &err {
        RegistryError::DigestMismatch {
            expected, actual, ..
        } => {
            assert_eq!(expected, &config_digest);
            assert_eq!(actual, &Digest::of(&tampered));
        }
        other => panic!("expected a digest mismatch, got {other}"),
    }
    assert!(err.to_string().contains(&format!(
        "failed to fetch blob {config_digest} from {}/vx/app",
        reg.host()
    )));
    assert!(!cache.has_blob(&config_digest, None));
    assert!(!cache.has_blob(&Digest::of(&tampered), None));
    assert!(files_in(&cache.tmp_dir()).is_empty(), "temp files left");
}

#[tokio::test(flavor = "multi_thread")]
async fn basic_auth_with_docker_config_credentials() {
    let password = "s3cret-Pa55word";
    let reg = Registry::start_with_basic_auth("vx", password);
    let work = tempfile::tempdir().unwrap();
    let write_config = |name: &str, user: &str, pass: &str| {
        let path = work.path().join(name);
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        std::fs::write(
            &path,
            format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, reg.host()),
        )
        .unwrap();
        path
    };
    let good = client(&write_config("good.json", "vx", password));
    let target = reference(&format!("{}/team/model:latest", reg.host()));

    let (path, digest, size) = blob_file(work.path(), "blob", &random_bytes(1 << 20, 2));
    assert!(!good.blob_exists(&target, &digest).await.unwrap());
    good.push_blob(&target, &digest, size, &path, None)
        .await
        .unwrap();
    assert!(good.blob_exists(&target, &digest).await.unwrap());
    let config = Descriptor::new(oci::OCI_CONFIG, digest.clone(), size);
    let manifest = manifest_for(&config, &config);
    let pushed = good
        .put_manifest(&target, "latest", oci::OCI_MANIFEST, manifest.clone())
        .await
        .unwrap();
    assert_eq!(good.get_manifest(&target).await.unwrap().digest, pushed);

    // A wrong password: a clear error that names what to check, and never the password.
    let wrong_password = "wrong-Pa55word-123";
    let bad_config = write_config("bad.json", "vx", wrong_password);
    let bad = client(&bad_config);
    let err = bad
        .push_blob(&target, &digest, size, &path, None)
        .await
        .unwrap_err();
    let msg = chain(&err);
    assert_eq!(
        err.status(),
        Some(reqwest::StatusCode::UNAUTHORIZED),
        "{msg}"
    );
    assert!(
        msg.starts_with(&format!(
            "failed to push blob {digest} to {}/team/model: 401 Unauthorized",
            reg.host()
        )),
        "{msg}"
    );
    assert!(
        msg.contains(&format!(
            "check the credentials for {} in {}",
            reg.host(),
            bad_config.display()
        )),
        "{msg}"
    );
    let debug = format!("{err:?}");
    for secret in [wrong_password, password] {
        assert!(
            !msg.contains(secret) && !debug.contains(secret),
            "{msg}\n{debug}"
        );
    }
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("vx:{wrong_password}"));
    assert!(!msg.contains(&encoded) && !debug.contains(&encoded));

    // No credentials at all: the error says there are none, and where we looked.
    let anonymous = client(&work.path().join("absent.json"));
    let err = anonymous.get_manifest(&target).await.unwrap_err();
    let msg = chain(&err);
    assert!(
        msg.contains("401 Unauthorized")
            && msg.contains(&format!("no credentials for {}", reg.host())),
        "{msg}"
    );
}

// ------------------------------------------------------------------------------------------------
// A tiny HTTP/1.1 server for flows the reference registry cannot show without more setup.
// ------------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct SeenRequest {
    method: String,
    target: String,
    headers: BTreeMap<String, String>,
    body_len: usize,
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn new(status: u16) -> Self {
        Reply {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }
    fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.into(), v.into()));
        self
    }
    fn body(mut self, b: impl Into<Vec<u8>>) -> Self {
        self.body = b.into();
        self
    }
}

type Handler = Arc<dyn Fn(&SeenRequest) -> Reply + Send + Sync>;

/// Serve `handler` on 127.0.0.1 (one request per connection); returns the port and a log.
async fn serve(handler: Handler) -> (u16, Arc<Mutex<Vec<SeenRequest>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let log = Arc::new(Mutex::new(Vec::new()));
    let log2 = log.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let handler = handler.clone();
            let log = log2.clone();
            tokio::spawn(async move {
                let mut r = BufReader::new(stream);
                let mut line = String::new();
                if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                    return;
                }
                let mut parts = line.split_whitespace();
                let method = parts.next().unwrap_or_default().to_string();
                let target = parts.next().unwrap_or_default().to_string();
                if !line.ends_with("HTTP/1.1\r\n") {
                    return; // a TLS ClientHello, say: hang up
                }
                let mut headers = BTreeMap::new();
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).await.unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                    if let Some((k, v)) = h.split_once(':') {
                        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                    }
                }
                let len: usize = headers
                    .get("content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let mut body = vec![0; len];
                let _ = r.read_exact(&mut body).await;
                let seen = SeenRequest {
                    method,
                    target,
                    headers,
                    body_len: len,
                };
                log.lock().unwrap().push(seen.clone());
                let reply = handler(&seen);
                let mut out = format!("HTTP/1.1 {} X\r\n", reply.status);
                for (k, v) in &reply.headers {
                    out.push_str(&format!("{k}: {v}\r\n"));
                }
                out.push_str(&format!(
                    "Content-Length: {}\r\nConnection: close\r\n\r\n",
                    reply.body.len()
                ));
                let mut stream = r.into_inner();
                let _ = stream.write_all(out.as_bytes()).await;
                let _ = stream.write_all(&reply.body).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (port, log)
}

#[tokio::test(flavor = "multi_thread")]
async fn anonymous_bearer_token_flow_and_redirected_blobs() {
    // Storage on another host name (localhost vs 127.0.0.1): must never see our Authorization.
    let blob = random_bytes(300_000, 3);
    let blob_digest = Digest::of(&blob);
    let blob2 = blob.clone();
    let (storage_port, storage_log) =
        serve(Arc::new(move |_req| Reply::new(200).body(blob2.clone()))).await;

    let manifest = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":0},"layers":[]}"#.to_vec();
    let manifest_digest = Digest::of(&manifest);
    let port_cell = Arc::new(Mutex::new(0u16));
    let port_for_handler = port_cell.clone();
    let m2 = manifest.clone();
    let bd = blob_digest.clone();
    let handler: Handler = Arc::new(move |req: &SeenRequest| {
        let port = *port_for_handler.lock().unwrap();
        if req.target.starts_with("/token?") {
            // Anonymous: no Authorization; the scope the client asked for.
            assert!(!req.headers.contains_key("authorization"));
            assert!(
                req.target.contains("service=fake-registry"),
                "{}",
                req.target
            );
            assert!(
                req.target.contains("scope=repository%3Alib%2Fimg%3Apull"),
                "{}",
                req.target
            );
            return Reply::new(200)
                .header("Content-Type", "application/json")
                .body(r#"{"access_token":"good-token","expires_in":300}"#);
        }
        if req.headers.get("authorization").map(String::as_str) != Some("Bearer good-token") {
            return Reply::new(401)
                .header(
                    "WWW-Authenticate",
                    &format!(
                        r#"Bearer realm="http://127.0.0.1:{port}/token",service="fake-registry",scope="repository:lib/img:pull""#
                    ),
                )
                .header("Content-Type", "application/json")
                .body(r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#);
        }
        match req.target.as_str() {
            "/v2/lib/img/manifests/v1" => Reply::new(200)
                .header("Content-Type", oci::OCI_MANIFEST)
                .header("Docker-Content-Digest", manifest_digest.as_str())
                .body(m2.clone()),
            // Serves other bytes than the digest it was asked for.
            t if t.starts_with("/v2/lib/img/manifests/sha256:") => Reply::new(200)
                .header("Content-Type", oci::OCI_MANIFEST)
                .body(m2.clone()),
            t if t == format!("/v2/lib/img/blobs/{bd}") => Reply::new(307).header(
                "Location",
                &format!("http://localhost:{storage_port}/storage/blob?sig=abc"),
            ),
            _ => Reply::new(404),
        }
    });
    let (port, log) = serve(handler).await;
    *port_cell.lock().unwrap() = port;

    let work = tempfile::tempdir().unwrap();
    let c = client(&work.path().join("none.json"));
    let img = reference(&format!("127.0.0.1:{port}/lib/img:v1"));

    let m = c.get_manifest(&img).await.unwrap();
    assert_eq!(m.bytes, manifest);
    assert_eq!(m.media_type, oci::OCI_MANIFEST);
    // The token is cached: a second fetch goes straight through.
    c.get_manifest(&img).await.unwrap();
    let token_requests = |log: &Arc<Mutex<Vec<SeenRequest>>>| {
        log.lock()
            .unwrap()
            .iter()
            .filter(|r| r.target.starts_with("/token?"))
            .count()
    };
    assert_eq!(token_requests(&log), 1);

    // Pinned to a digest the served bytes do not have: rejected.
    let pinned = img.with_digest(Digest::of(b"some other manifest"));
    let err = c.get_manifest(&pinned).await.unwrap_err();
    assert!(matches!(err, RegistryError::DigestMismatch { .. }), "{err}");

    // A blob redirected to storage elsewhere: fetched and verified; the token stayed home.
    let cache = Cache::open(work.path().join("cache")).unwrap();
    let desc = Descriptor::new(oci::OCI_LAYER_GZIP, blob_digest.clone(), blob.len() as u64);
    let path = c.fetch_blob(&img, &desc, &cache).await.unwrap();
    assert_eq!(std::fs::read(path).unwrap(), blob);
    let storage = storage_log.lock().unwrap().clone();
    assert_eq!(storage.len(), 1);
    assert_eq!(storage[0].target, "/storage/blob?sig=abc");
    assert!(
        !storage[0].headers.contains_key("authorization"),
        "{:?}",
        storage[0].headers
    );
    assert_eq!(token_requests(&log), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn uploads_stream_with_content_length_to_a_relative_location() {
    let (port, log) = serve(Arc::new(|req: &SeenRequest| {
        match (req.method.as_str(), req.target.as_str()) {
            ("POST", "/v2/a/blobs/uploads/") => Reply::new(202)
                .header("Location", "/upload/session-1?_state=xyz")
                .header("Docker-Upload-UUID", "session-1"),
            ("PUT", t) if t.starts_with("/upload/session-1?_state=xyz&digest=sha256%3A") => {
                Reply::new(201)
            }
            _ => Reply::new(400),
        }
    }))
    .await;
    let work = tempfile::tempdir().unwrap();
    let c = client(&work.path().join("none.json"));
    let target = reference(&format!("127.0.0.1:{port}/a:t"));
    let (path, digest, size) = blob_file(work.path(), "blob", &random_bytes(3 << 20, 4));
    c.push_blob(&target, &digest, size, &path, None)
        .await
        .unwrap();

    let log = log.lock().unwrap().clone();
    let put = log.iter().find(|r| r.method == "PUT").expect("a PUT");
    // One monolithic PUT, framed by Content-Length (not chunked), the whole file as its body.
    assert_eq!(put.headers.get("content-length"), Some(&size.to_string()));
    assert!(!put.headers.contains_key("transfer-encoding"));
    assert_eq!(put.body_len as u64, size);
    assert_eq!(
        put.headers.get("content-type").map(String::as_str),
        Some("application/octet-stream")
    );
    assert_eq!(log.iter().filter(|r| r.method == "PUT").count(), 1);

    // A file that is not the size the caller says is refused before any request.
    let err = c
        .push_blob(&target, &digest, size + 1, &path, None)
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::SizeMismatch { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_loopback_registry_says_cannot_connect() {
    let port = crate::support::free_port();
    let work = tempfile::tempdir().unwrap();
    let c = client(&work.path().join("none.json"));
    let r = reference(&format!("127.0.0.1:{port}/x:y"));
    let err = c.get_manifest(&r).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "failed to fetch manifest for 127.0.0.1:{port}/x:y after 5 attempts: cannot connect to registry host 127.0.0.1:{port}"
        )
    );
}

/// TLS with the system's trust roots (this machine's egress CA lives in /etc/ssl/certs).
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs network access to pypi.org"]
async fn https_uses_the_system_trust_roots() {
    let work = tempfile::tempdir().unwrap();
    let c = client(&work.path().join("none.json"));
    // pypi.org is no registry: any HTTP answer proves the TLS handshake was verified.
    let r = reference("pypi.org/simple/pip:latest");
    let err = c.get_manifest(&r).await.unwrap_err();
    assert!(err.status().is_some(), "{}", chain(&err));
}
