//! Issue 4, robustness: pushes survive a flaky network, and a dead registry fails fast and says
//! which host it was.
//!
//! A fault-injecting TCP proxy sits in front of a real registry. Each passed connection carries
//! one request (the proxy adds `Connection: close` to its response), so the client keeps opening
//! connections and meets the faults, decided per connection by a counter or armed once:
//! - connection 1 is closed at once, connection 3 gets a canned 503 (both among the first HEADs);
//! - the first upload to pass 3 MB (a layer) is cut there, upstream;
//! - the answer to the first blob commit is cut inside its status line, downstream: the blob
//!   landed, the client never hears so, and must find out with a HEAD instead of uploading again;
//! - the first response to pass 2 MB downstream (a base layer being pulled) is cut there.
//!
//! Four faults in all, one fewer than the tries an operation gets: no operation can fail five
//! times, so the push must succeed however the faults fall.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::build::{
    by_digest, digest_of, offline_build, offline_push_args, text, tiny_project, vx, vx_ok,
};
use crate::support::*;

#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Forward one request and its response, adding `Connection: close`.
    Pass,
    /// Accept, then close without reading or answering.
    CloseAtConnect,
    /// Read the first request's head and answer 503 without asking the registry.
    Canned503,
}

/// The fault for connection number `n`: connections 1 and 3 (among the first requests, HEADs).
fn plan(n: usize) -> Fault {
    match n {
        1 => Fault::CloseAtConnect,
        3 => Fault::Canned503,
        _ => Fault::Pass,
    }
}

/// Where the one upstream cut falls: inside the first upload that gets this far (a layer).
const UPLOAD_CUT: usize = 3 << 20;
/// Where the one downstream cut falls: inside the status line answering the first blob commit.
const RESPONSE_CUT: usize = 12;
/// Where the one download cut falls: inside the first response body that gets this far (a
/// base layer being pulled).
const DOWNLOAD_CUT: usize = 2 << 20;

#[derive(Default)]
struct Stats {
    connections: AtomicUsize,
    closed: AtomicUsize,
    canned: AtomicUsize,
    /// Whether the upload cut and the commit-response cut are still to come.
    upload_cut_armed: AtomicBool,
    commit_cut_armed: AtomicBool,
    download_cut_armed: AtomicBool,
    cut_up: AtomicUsize,
    cut_download: AtomicUsize,
    cut_down: AtomicUsize,
    /// The blob whose commit response was cut.
    cut_commit: Mutex<Option<String>>,
    /// The request line of every request that reached the registry.
    requests: Mutex<Vec<String>>,
}

impl Stats {
    fn count(&self, method: &str) -> usize {
        let requests = self.requests.lock().unwrap();
        requests.iter().filter(|r| r.starts_with(method)).count()
    }
}

/// Listens on a loopback port; lives (on detached threads) until the test process ends.
struct FaultProxy {
    port: u16,
    stats: Arc<Stats>,
}

impl FaultProxy {
    fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stats = Arc::new(Stats::default());
        stats.upload_cut_armed.store(true, Ordering::SeqCst);
        stats.commit_cut_armed.store(true, Ordering::SeqCst);
        stats.download_cut_armed.store(true, Ordering::SeqCst);
        let st = stats.clone();
        std::thread::spawn(move || {
            for (n, client) in listener.incoming().enumerate() {
                let Ok(client) = client else { continue };
                st.connections.fetch_add(1, Ordering::SeqCst);
                let st = st.clone();
                std::thread::spawn(move || serve(client, upstream, plan(n), &st));
            }
        });
        FaultProxy { port, stats }
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn summary(&self) -> String {
        let s = &self.stats;
        format!(
            "{} connections: {} closed at connect, {} canned 503, {} upload cut, {} commit response cut; {} HEAD, {} POST, {} PUT reached the registry",
            s.connections.load(Ordering::SeqCst),
            s.closed.load(Ordering::SeqCst),
            s.canned.load(Ordering::SeqCst),
            s.cut_up.load(Ordering::SeqCst),
            s.cut_down.load(Ordering::SeqCst),
            s.count("HEAD "),
            s.count("POST "),
            s.count("PUT "),
        )
    }
}

fn serve(mut client: TcpStream, upstream: SocketAddr, fault: Fault, st: &Stats) {
    match fault {
        Fault::CloseAtConnect => {
            st.closed.fetch_add(1, Ordering::SeqCst);
            let _ = client.shutdown(Shutdown::Both);
            return;
        }
        Fault::Canned503 => {
            st.canned.fetch_add(1, Ordering::SeqCst);
            let _ = client.set_read_timeout(Some(Duration::from_secs(5)));
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match client.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(k) => head.extend_from_slice(&buf[..k]),
                }
            }
            let _ = client.write_all(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 12\r\nConnection: close\r\n\r\ninjected 503",
            );
            let _ = client.shutdown(Shutdown::Write);
            // Drain what the client still sends (a body) so it reads the answer, not a reset.
            while let Ok(k) = client.read(&mut buf) {
                if k == 0 {
                    break;
                }
            }
            return;
        }
        Fault::Pass => {}
    }
    let Ok(server) = TcpStream::connect(upstream) else {
        return;
    };
    let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    // Set by the upstream half when this connection's request is the commit to cut the answer of.
    let cut_response = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            if pump(s2, c2, false, st, &cut_response) {
                st.cut_down.fetch_add(1, Ordering::SeqCst);
            }
        });
        if pump(client, server, true, st, &cut_response) {
            st.cut_up.fetch_add(1, Ordering::SeqCst);
        }
    });
}

/// `sha256:HEX` of a blob commit's request line (`PUT …?digest=sha256%3AHEX`).
fn commit_digest(request_line: &str) -> Option<String> {
    if !request_line.starts_with("PUT ") {
        return None;
    }
    let i = request_line.find("digest=sha256")?;
    let rest = &request_line[i + "digest=sha256".len()..];
    let hex = rest
        .strip_prefix("%3A")
        .or_else(|| rest.strip_prefix(':'))?;
    Some(format!("sha256:{}", hex.get(..64)?))
}

/// Copy one direction of a passed connection (which carries one request); returns whether it
/// cut. Upstream: log the request line, arm the commit-response cut, make the upload cut.
/// Downstream: make the commit-response cut, or add `Connection: close` to the response.
fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    upstream: bool,
    st: &Stats,
    cut_response: &AtomicBool,
) -> bool {
    let cut = |from: &TcpStream, to: &TcpStream| {
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
        true
    };
    let mut buf = [0u8; 16 * 1024];
    let mut sent = 0usize;
    loop {
        let k = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(k) => k,
        };
        if upstream && sent == 0 {
            let line = String::from_utf8_lossy(&buf[..k]);
            let line = line.lines().next().unwrap_or_default().to_string();
            if let Some(d) = commit_digest(&line)
                && st.commit_cut_armed.swap(false, Ordering::SeqCst)
            {
                *st.cut_commit.lock().unwrap() = Some(d);
                cut_response.store(true, Ordering::SeqCst);
            }
            st.requests.lock().unwrap().push(line);
        }
        if upstream
            && sent + k >= UPLOAD_CUT
            && !cut_response.load(Ordering::SeqCst)
            && st.upload_cut_armed.swap(false, Ordering::SeqCst)
        {
            let _ = to.write_all(&buf[..UPLOAD_CUT - sent]);
            return cut(&from, &to);
        }
        if !upstream
            && sent + k >= DOWNLOAD_CUT
            && st.download_cut_armed.swap(false, Ordering::SeqCst)
        {
            let _ = to.write_all(&buf[..DOWNLOAD_CUT.saturating_sub(sent).min(k)]);
            st.cut_download.fetch_add(1, Ordering::SeqCst);
            cut(&from, &to);
            return false;
        }
        if !upstream && sent == 0 {
            if cut_response.load(Ordering::SeqCst) {
                let _ = to.write_all(&buf[..RESPONSE_CUT.min(k)]);
                return cut(&from, &to);
            }
            // The response starts the stream; its status line ends at the first CRLF.
            if let Some(eol) = buf[..k].windows(2).position(|w| w == b"\r\n") {
                let head = [&buf[..eol + 2], b"Connection: close\r\n", &buf[eol + 2..k]];
                if to.write_all(&head.concat()).is_err() {
                    break;
                }
                sent += k;
                continue;
            }
        }
        if to.write_all(&buf[..k]).is_err() {
            break;
        }
        sent += k;
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
    false
}

#[test]
#[allow(clippy::print_stderr)] // the figures, for `--nocapture`
fn a_push_through_a_flaky_network_lands_the_same_image() {
    let reg = Registry::start();
    let base = reg.push_base();
    let proxy = FaultProxy::start(format!("127.0.0.1:{}", reg.port()).parse().unwrap());
    let tmp = tempfile::tempdir().unwrap();
    let (project, wheels) = tiny_project(tmp.path());
    let cache = tmp.path().join("cache");
    let build = |image: &str| vx_ok(&offline_push_args(&project, &base, &wheels, &cache, image)).0;

    let clean = build(&format!("{}/x/clean:v1", reg.host()));
    let started = Instant::now();
    let flaky = build(&format!("{}/x/y:v1", proxy.host()));
    let took = started.elapsed();
    let summary = proxy.summary();
    eprintln!("flaky push took {took:?} over {summary}");

    assert_eq!(digest_of(&flaky), digest_of(&clean), "{summary}");
    let s = &proxy.stats;
    assert!(
        [&s.closed, &s.canned, &s.cut_up, &s.cut_down]
            .iter()
            .all(|c| c.load(Ordering::SeqCst) == 1),
        "the faults should have been injected: {summary}"
    );
    // The commit whose answer was lost had landed: a HEAD said so, and it was not uploaded again
    // (jib#4301).
    let lost = s
        .cut_commit
        .lock()
        .unwrap()
        .clone()
        .expect("a commit was cut");
    let requests = s.requests.lock().unwrap().clone();
    let hex = lost.trim_start_matches("sha256:");
    let commits = requests
        .iter()
        .filter(|r| commit_digest(r).as_deref() == Some(lost.as_str()))
        .count();
    assert_eq!(commits, 1, "{lost} was committed again: {requests:#?}");
    assert!(
        requests
            .iter()
            .skip_while(|r| commit_digest(r).as_deref() != Some(lost.as_str()))
            .any(|r| r.starts_with("HEAD ") && r.contains(hex)),
        "no HEAD for {lost} after its commit: {requests:#?}"
    );
    assert!(took < Duration::from_secs(60), "{took:?}");

    // The registry itself holds the image, whole: skopeo verifies every blob it copies.
    let pinned = by_digest(&flaky).replacen(&proxy.host(), &reg.host(), 1);
    let out = tmp.path().join("pulled");
    skopeo(&[
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{pinned}"),
        &format!("oci:{}:v1", out.display()),
    ]);
}

#[test]
#[allow(clippy::print_stderr)] // the timing, for `--nocapture`
fn a_registry_that_is_down_fails_in_bounded_time_naming_the_host() {
    let reg = Registry::start();
    let base = reg.push_base();
    let dead = format!("127.0.0.1:{}", free_port());
    let tmp = tempfile::tempdir().unwrap();
    let (project, wheels) = tiny_project(tmp.path());
    let started = Instant::now();
    let out = vx(&offline_push_args(
        &project,
        &base,
        &wheels,
        &tmp.path().join("cache"),
        &format!("{dead}/x/y:v1"),
    ));
    let took = started.elapsed();
    let stderr = text(&out.stderr);
    eprintln!("failed after {took:?}: {stderr}");
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(took < Duration::from_secs(90), "{took:?}");
    assert!(
        stderr.contains(&format!("cannot connect to registry host {dead}")),
        "{stderr}"
    );
    assert!(stderr.contains("after 5 attempts"), "{stderr}");
}

#[test]
#[allow(clippy::print_stderr)] // the timing, for `--nocapture`
fn a_registry_killed_mid_push_fails_cleanly_and_the_same_command_completes_after_restart() {
    let mut reg = Registry::start();
    let base = reg.push_base();
    let tmp = tempfile::tempdir().unwrap();
    let (project, wheels) = tiny_project(tmp.path());
    // 96 MB that does not compress, so the push lasts long enough to be cut.
    let mut data = vec![0u8; 96 << 20];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut data)
        .unwrap();
    std::fs::write(project.join("weights.bin"), &data).unwrap();
    drop(data);
    let cache = tmp.path().join("cache");
    // The digest these inputs give, from an OCI layout build.
    let (expected, _) = offline_build(
        &project,
        &base,
        &wheels,
        &cache,
        &tmp.path().join("layout"),
        &["--max-file-size", "1GB"],
    );
    let image = format!("{}/x/killed:v1", reg.host());
    let mut args = offline_push_args(&project, &base, &wheels, &cache, &image);
    args.extend(["--max-file-size".to_string(), "1GB".to_string()]);

    // Kill the registry as soon as the first upload to x/killed starts.
    let uploads = reg
        .storage
        .path()
        .join("docker/registry/v2/repositories/x/killed/_uploads");
    let child = spawn_vxbuild(&args);
    let started = Instant::now();
    while !uploads.is_dir() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no upload started"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    reg.kill();
    let killed_at = Instant::now();
    let out = child.wait_with_output().unwrap();
    let took = killed_at.elapsed();
    let stderr = text(&out.stderr);
    eprintln!("failed {took:?} after the kill: {stderr}");
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(took < Duration::from_secs(120), "{took:?}");
    assert!(stderr.contains(&reg.host()), "{stderr}");

    // Nothing under the tag: the manifest goes last.
    reg.restart();
    let tagged = std::process::Command::new("skopeo")
        .args([
            "inspect",
            "--tls-verify=false",
            &format!("docker://{image}"),
        ])
        .output()
        .unwrap();
    assert!(
        !tagged.status.success(),
        "the tag exists after a failed push"
    );

    // The same command completes, with the digest the inputs give.
    let (pushed, _) = vx_ok(&args);
    assert_eq!(digest_of(&pushed), digest_of(&expected));
    let out_dir = tmp.path().join("pulled");
    skopeo(&[
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{}", by_digest(&pushed)),
        &format!("oci:{}:v1", out_dir.display()),
    ]);
}

/// A registry killed while it linked a blob into the target repository (a mount) leaves the link
/// file empty, and distribution then answers 500 to every HEAD of that blob there. The push
/// mounts it again (which repairs the link) instead of failing.
#[test]
fn a_blob_the_registry_cannot_answer_for_is_mounted_again() {
    let reg = Registry::start();
    let base = reg.push_base();
    let tmp = tempfile::tempdir().unwrap();
    let (project, wheels) = tiny_project(tmp.path());
    let image = format!("{}/x/crashed:v1", reg.host());
    let first_layer = skopeo_inspect_raw(&base)["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    let link = reg
        .storage
        .path()
        .join("docker/registry/v2/repositories/x/crashed/_layers/sha256")
        .join(&first_layer)
        .join("link");
    std::fs::create_dir_all(link.parent().unwrap()).unwrap();
    std::fs::write(&link, "").unwrap();
    let mut args = offline_push_args(&project, &base, &wheels, &tmp.path().join("cache"), &image);
    args.push("-v".into());
    let (pushed, stderr) = vx_ok(&args);
    assert!(stderr.contains("500"), "{stderr}");
    assert!(
        stderr.contains("mounting or uploading it anyway"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(&link).unwrap(),
        format!("sha256:{first_layer}")
    );
    skopeo(&[
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{}", by_digest(&pushed)),
        &format!("oci:{}:v1", tmp.path().join("pulled").display()),
    ]);
}

#[test]
#[allow(clippy::print_stderr)] // the timing, for `--nocapture`
fn a_registry_that_accepts_but_never_answers_ends_the_build_within_two_minutes() {
    // Accepts every connection and holds it open, silent.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let host = format!("127.0.0.1:{}", listener.local_addr().unwrap().port());
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = held.clone();
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            keep.lock().unwrap().push(s);
        }
    });
    let tmp = tempfile::tempdir().unwrap();
    let (project, wheels) = tiny_project(tmp.path());
    let started = Instant::now();
    let out = vx(&[
        "build",
        project.to_str().unwrap(),
        "--base-image",
        &format!("{host}/library/python:3.9-slim"),
        "--no-index",
        "--find-links",
        wheels.to_str().unwrap(),
        "--output",
        &format!("oci:{}", tmp.path().join("layout").display()),
        "--cache-dir",
        tmp.path().join("cache").to_str().unwrap(),
    ]);
    let took = started.elapsed();
    let stderr = text(&out.stderr);
    eprintln!("failed after {took:?}: {stderr}");
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(took < Duration::from_secs(120), "{took:?}");
    assert!(stderr.contains(&host), "{stderr}");
    assert!(!held.lock().unwrap().is_empty(), "vxbuild never connected");
    assert!(!tmp.path().join("layout/index.json").exists());
}

#[test]
fn a_base_pull_cut_mid_download_starts_over_and_lands_the_same_image() {
    let reg = Registry::start();
    reg.push_base();
    let proxy = FaultProxy::start(format!("127.0.0.1:{}", reg.port()).parse().unwrap());
    // The base through the proxy for both builds (its name is in the image's annotations).
    let base = format!("{}/{BASE_REPOSITORY}:{BASE_TAG}", proxy.host());
    let tmp = tempfile::tempdir().unwrap();
    let (project, wheels) = tiny_project(tmp.path());
    // Each with an empty cache, so the base's layers are downloaded through the proxy.
    let (first, _) = offline_build(
        &project,
        &base,
        &wheels,
        &tmp.path().join("cache1"),
        &tmp.path().join("layout1"),
        &["--no-lock"],
    );
    assert_eq!(
        proxy.stats.cut_download.load(Ordering::SeqCst),
        1,
        "{}",
        proxy.summary()
    );
    let (second, _) = offline_build(
        &project,
        &base,
        &wheels,
        &tmp.path().join("cache2"),
        &tmp.path().join("layout2"),
        &["--no-lock"],
    );
    assert_eq!(digest_of(&first), digest_of(&second));
    // The layout built through the cut holds every blob whole: skopeo verifies as it copies.
    skopeo(&[
        "copy",
        &format!("oci:{}", tmp.path().join("layout1").display()),
        &format!("oci:{}:copy", tmp.path().join("copied").display()),
    ]);
}
