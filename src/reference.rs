//! Image references (`[REGISTRY/]REPOSITORY[:TAG][@DIGEST]`), parsed and normalized as docker does.
//!
//! The grammar is distribution/reference's (`regexp.go`, `normalize.go`):
//!
//! ```text
//! reference      := name [ ":" tag ] [ "@" digest ]
//! name           := [ domain "/" ] path-component [ "/" path-component ]*
//! domain         := host [ ":" port ]      host := domain-name | IPv4 | "[" IPv6 "]"
//! path-component := [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
//! tag            := [\w][\w.-]{0,127}
//! ```
//!
//! Normalization: the first `/`-separated component is the registry only if it contains `.` or `:`
//! or is `localhost`; otherwise the registry is `docker.io`. `index.docker.io` is `docker.io`, and a
//! one-component Docker Hub name gets the `library/` prefix (`python` → `docker.io/library/python`).
//!
//! One deliberate difference from docker: docker also treats a first component with uppercase
//! letters as a registry (`Foo/bar` → registry `Foo`), which its own tests mark as a FIXME. Here
//! `Foo/bar` is a Docker Hub repository and is rejected because repository names are lowercase,
//! which is the message a user who typed it needs.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use crate::digest::Digest;

/// Docker Hub's canonical registry name in references.
pub const DOCKER_HUB: &str = "docker.io";
/// The host that actually serves Docker Hub's registry API.
pub const DOCKER_HUB_API_HOST: &str = "registry-1.docker.io";
const DOCKER_HUB_LEGACY: &str = "index.docker.io";
const NAME_TOTAL_LENGTH_MAX: usize = 255;

/// A registry image reference, normalized (`python:3.9-slim` is `docker.io/library/python:3.9-slim`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    /// `HOST[:PORT]` as written (`docker.io` for Docker Hub).
    pub registry: String,
    /// The repository path inside the registry (`library/python`).
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid image reference {reference:?}: {problem}")]
pub struct ReferenceError {
    pub reference: String,
    pub problem: ReferenceProblem,
}

/// What is wrong with a reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceProblem {
    #[error("it is empty")]
    Empty,
    #[error(
        "a 64-character hexadecimal string is an image ID, not a repository name (write REPOSITORY@sha256:<hex> to pin a digest)"
    )]
    ImageId,
    #[error("there is no repository name before the tag or digest")]
    MissingName,
    #[error("registry {0:?} is not a valid HOST[:PORT]")]
    InvalidRegistry(String),
    #[error("the repository name has an empty path component (a leading, trailing or doubled '/')")]
    EmptyComponent,
    #[error("repository name {0:?} must be lowercase")]
    Uppercase(String),
    #[error(
        "repository path component {0:?} is invalid: use lowercase letters and digits, separated by single '.', '_' or '__', or by dashes"
    )]
    InvalidComponent(String),
    #[error("the repository name is {0} characters long, more than the limit of 255")]
    NameTooLong(usize),
    #[error(
        "tag {0:?} is invalid: a tag is 1 to 128 letters, digits, '_', '.' or '-', not starting with '.' or '-'"
    )]
    InvalidTag(String),
    #[error("digest {0:?} is invalid: expected sha256:<64 lowercase hex digits>")]
    InvalidDigest(String),
    #[error("digest {0:?} uses an unsupported algorithm (only sha256 is supported)")]
    UnsupportedDigest(String),
}

impl Reference {
    /// Parse and normalize a reference as `docker pull` does.
    pub fn parse(s: &str) -> Result<Reference, ReferenceError> {
        parse(s).map_err(|problem| ReferenceError {
            reference: s.to_string(),
            problem,
        })
    }

    /// The host serving the registry API: `registry-1.docker.io` for Docker Hub, else the registry.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API_HOST
        } else {
            &self.registry
        }
    }

    /// The tag, or `latest` when none was given (use the digest instead when there is one).
    pub fn tag_or_latest(&self) -> &str {
        self.tag.as_deref().unwrap_or("latest")
    }

    /// The same reference pinned to `digest` (the tag is kept, as docker prints it).
    pub fn with_digest(&self, digest: Digest) -> Reference {
        Reference {
            digest: Some(digest),
            ..self.clone()
        }
    }

    /// The same repository with `tag` and no digest.
    pub fn with_tag(&self, tag: &str) -> Result<Reference, ReferenceError> {
        if !is_valid_tag(tag) {
            return Err(ReferenceError {
                reference: format!("{}:{tag}", self.name()),
                problem: ReferenceProblem::InvalidTag(tag.to_string()),
            });
        }
        Ok(Reference {
            tag: Some(tag.to_string()),
            digest: None,
            ..self.clone()
        })
    }

    /// `registry/repository`, without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// Whether the registry is this machine: `localhost`, 127.0.0.0/8 or `[::1]` (any port).
    pub fn is_loopback(&self) -> bool {
        host_is_loopback(&self.registry)
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reference::parse(s)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// Whether `HOST[:PORT]` names this machine: `localhost`, 127.0.0.0/8 or `[::1]`.
pub fn host_is_loopback(host_port: &str) -> bool {
    let host = split_host_port(host_port).0;
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6
            .parse::<std::net::Ipv6Addr>()
            .is_ok_and(|a| a.is_loopback());
    }
    host.parse::<Ipv4Addr>().is_ok_and(|a| a.is_loopback())
}

/// Split `HOST[:PORT]` (HOST may be a bracketed IPv6 address) into host and port.
pub fn split_host_port(s: &str) -> (&str, Option<&str>) {
    if s.starts_with('[') {
        if let Some(end) = s.find(']') {
            let (host, rest) = s.split_at(end + 1);
            return (host, rest.strip_prefix(':'));
        }
        return (s, None);
    }
    match s.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (s, None),
    }
}

fn parse(s: &str) -> Result<Reference, ReferenceProblem> {
    if s.is_empty() {
        return Err(ReferenceProblem::Empty);
    }
    if s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(ReferenceProblem::ImageId);
    }

    let (name_tag, digest) = match s.split_once('@') {
        Some((nt, d)) => (nt, Some(parse_digest(d)?)),
        None => (s, None),
    };
    // A tag is a ':' after the last '/': a ':' before it belongs to the registry's port.
    let last_component_start = name_tag.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match name_tag[last_component_start..].find(':') {
        Some(i) => {
            let at = last_component_start + i;
            (&name_tag[..at], Some(&name_tag[at + 1..]))
        }
        None => (name_tag, None),
    };
    if let Some(t) = tag
        && !is_valid_tag(t)
    {
        return Err(ReferenceProblem::InvalidTag(t.to_string()));
    }
    if name.is_empty() {
        return Err(ReferenceProblem::MissingName);
    }

    let (registry, path) = match name.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
            let registry = if first == DOCKER_HUB_LEGACY {
                DOCKER_HUB
            } else {
                first
            };
            (registry, rest)
        }
        _ => (DOCKER_HUB, name),
    };
    if !is_valid_registry(registry) {
        return Err(ReferenceProblem::InvalidRegistry(registry.to_string()));
    }
    let repository = if registry == DOCKER_HUB && !path.contains('/') {
        format!("library/{path}")
    } else {
        path.to_string()
    };
    if repository.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(ReferenceProblem::Uppercase(repository));
    }
    for component in repository.split('/') {
        if component.is_empty() {
            return Err(ReferenceProblem::EmptyComponent);
        }
        if !is_valid_path_component(component) {
            return Err(ReferenceProblem::InvalidComponent(component.to_string()));
        }
    }
    let name_len = registry.len() + 1 + repository.len();
    if name_len > NAME_TOTAL_LENGTH_MAX {
        return Err(ReferenceProblem::NameTooLong(name_len));
    }
    Ok(Reference {
        registry: registry.to_string(),
        repository,
        tag: tag.map(str::to_string),
        digest,
    })
}

/// `algorithm:hex`, where only sha256 is supported (docker accepts more; none is used for images).
fn parse_digest(s: &str) -> Result<Digest, ReferenceProblem> {
    let Some((algorithm, encoded)) = s.split_once(':') else {
        return Err(ReferenceProblem::InvalidDigest(s.to_string()));
    };
    let algorithm_ok = !algorithm.is_empty()
        && algorithm.split(['-', '_', '+', '.']).all(|part| {
            part.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
                && part.bytes().all(|b| b.is_ascii_alphanumeric())
        });
    let encoded_ok = encoded.len() >= 32 && encoded.bytes().all(|b| b.is_ascii_hexdigit());
    if algorithm_ok && encoded_ok && algorithm != "sha256" {
        return Err(ReferenceProblem::UnsupportedDigest(s.to_string()));
    }
    s.parse()
        .map_err(|_| ReferenceProblem::InvalidDigest(s.to_string()))
}

/// `[\w][\w.-]{0,127}`
fn is_valid_tag(t: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut bytes = t.bytes();
    t.len() <= 128
        && bytes.next().is_some_and(word)
        && bytes.all(|b| word(b) || b == b'.' || b == b'-')
}

/// `[a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*`
fn is_valid_path_component(c: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let b = c.as_bytes();
    let mut i = 0;
    loop {
        // One run of alphanumerics, required.
        let start = i;
        while i < b.len() && alnum(b[i]) {
            i += 1;
        }
        if i == start {
            return false;
        }
        if i == b.len() {
            return true;
        }
        // One separator.
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < b.len() && b[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < b.len() && b[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
    }
}

/// `host[:port]` with host a domain name, IPv4 address or bracketed IPv6 address (no zone).
fn is_valid_registry(r: &str) -> bool {
    let (host, port) = split_host_port(r);
    if let Some(p) = port
        && (p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return false;
    }
    if let Some(inner) = host.strip_prefix('[') {
        let Some(v6) = inner.strip_suffix(']') else {
            return false;
        };
        return !v6.is_empty() && v6.bytes().all(|b| b.is_ascii_hexdigit() || b == b':');
    }
    // domain-name: components of [a-zA-Z0-9] with inner dashes, joined by '.'; covers IPv4.
    !host.is_empty()
        && host.split('.').all(|c| {
            let b = c.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|&x| x.is_ascii_alphanumeric() || x == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff";

    fn ok(s: &str) -> Reference {
        Reference::parse(s).unwrap_or_else(|e| panic!("{s:?} should parse: {e}"))
    }

    fn problem(s: &str) -> ReferenceProblem {
        match Reference::parse(s) {
            Ok(r) => panic!("{s:?} should be rejected, parsed as {r}"),
            Err(e) => {
                assert_eq!(e.reference, s);
                e.problem
            }
        }
    }

    /// (input, registry, repository, tag, digest)
    fn check(input: &str, registry: &str, repository: &str, tag: Option<&str>, digest: bool) {
        let r = ok(input);
        assert_eq!(r.registry, registry, "registry of {input:?}");
        assert_eq!(r.repository, repository, "repository of {input:?}");
        assert_eq!(r.tag.as_deref(), tag, "tag of {input:?}");
        assert_eq!(r.digest.is_some(), digest, "digest of {input:?}");
    }

    #[test]
    fn docker_hub_familiar_names_are_normalized() {
        check("python", "docker.io", "library/python", None, false);
        check(
            "python:3.9-slim",
            "docker.io",
            "library/python",
            Some("3.9-slim"),
            false,
        );
        check(
            "docker.io/python",
            "docker.io",
            "library/python",
            None,
            false,
        );
        check(
            "docker.io/library/python",
            "docker.io",
            "library/python",
            None,
            false,
        );
        check(
            "index.docker.io/python",
            "docker.io",
            "library/python",
            None,
            false,
        );
        check(
            "index.docker.io/dmcgowan/myapp",
            "docker.io",
            "dmcgowan/myapp",
            None,
            false,
        );
        check(
            "dmcgowan/myapp:latest",
            "docker.io",
            "dmcgowan/myapp",
            Some("latest"),
            false,
        );
        check(
            "library/foo/bar",
            "docker.io",
            "library/foo/bar",
            None,
            false,
        );
        check("store/foo/bar", "docker.io", "store/foo/bar", None, false);
        check("test_com/foo", "docker.io", "test_com/foo", None, false);
        check(
            "docker/migrator",
            "docker.io",
            "docker/migrator",
            None,
            false,
        );
        assert_eq!(
            ok("python:3.9-slim").to_string(),
            "docker.io/library/python:3.9-slim"
        );
    }

    #[test]
    fn first_component_is_a_registry_only_with_dot_colon_or_localhost() {
        check("localhost/a", "localhost", "a", None, false);
        check("localhost:5000/a/b", "localhost:5000", "a/b", None, false);
        check("test.com/foo", "test.com", "foo", None, false);
        check("test:5000/repo", "test:5000", "repo", None, false);
        check("test-com:8080/foo", "test-com:8080", "foo", None, false);
        check(
            "xn--n3h.com:18080/foo",
            "xn--n3h.com:18080",
            "foo",
            None,
            false,
        );
        check("192.168.1.1/repo", "192.168.1.1", "repo", None, false);
        check(
            "192.168.1.1:5000/repo:5050",
            "192.168.1.1:5000",
            "repo",
            Some("5050"),
            false,
        );
        check(
            "us-central1-docker.pkg.dev/p/r/img",
            "us-central1-docker.pkg.dev",
            "p/r/img",
            None,
            false,
        );
        check(
            "sub-dom1.foo.com/bar/baz/quux:some-long-tag",
            "sub-dom1.foo.com",
            "bar/baz/quux",
            Some("some-long-tag"),
            false,
        );
        check(
            "b.gcr.io/test.example.com/my-app:test.example.com",
            "b.gcr.io",
            "test.example.com/my-app",
            Some("test.example.com"),
            false,
        );
        // Not a registry: no '.', ':' and not localhost.
        check(
            "foo/foo_bar.com:8080",
            "docker.io",
            "foo/foo_bar.com",
            Some("8080"),
            false,
        );
        // A registry other than Docker Hub gets no library/ prefix.
        check(
            "example.com/privatebase",
            "example.com",
            "privatebase",
            None,
            false,
        );
    }

    #[test]
    fn a_colon_in_the_only_component_is_a_tag_not_a_port() {
        // As docker: `localhost:5000` alone is the image `localhost` tagged `5000`.
        check(
            "localhost:5000",
            "docker.io",
            "library/localhost",
            Some("5000"),
            false,
        );
        check(
            "test.com:5000",
            "docker.io",
            "library/test.com",
            Some("5000"),
            false,
        );
        check(
            "192.168.1.1:tag",
            "docker.io",
            "library/192.168.1.1",
            Some("tag"),
            false,
        );
        check(
            "foo_bar.com:8080",
            "docker.io",
            "library/foo_bar.com",
            Some("8080"),
            false,
        );
    }

    #[test]
    fn ipv6_registries() {
        check("[::1]:5000/repo", "[::1]:5000", "repo", None, false);
        check("[2001:db8::1]/repo", "[2001:db8::1]", "repo", None, false);
        check(
            "[2001:db8:1:2:3:4:5:6]/repo:tag",
            "[2001:db8:1:2:3:4:5:6]",
            "repo",
            Some("tag"),
            false,
        );
        check(
            &format!("[2001:db8::1]:5000/repo:tag@sha256:{HEX}"),
            "[2001:db8::1]:5000",
            "repo",
            Some("tag"),
            true,
        );
        assert!(matches!(
            problem("[fe80::1%eth0]:5000/repo"),
            ReferenceProblem::InvalidRegistry(_)
        ));
        // A bare bracketed address has no repository: docker rejects it too.
        assert!(Reference::parse("[2001:db8::1]:5000").is_err());
        assert!(Reference::parse("[2001:db8::1]").is_err());
    }

    #[test]
    fn tags_and_digests() {
        let s = format!("127.0.0.1:5000/x:tag@sha256:{HEX}");
        let r = ok(&s);
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "x");
        assert_eq!(r.tag.as_deref(), Some("tag"));
        assert_eq!(r.digest.as_ref().unwrap().hex(), HEX);
        assert_eq!(r.to_string(), s);

        let r = ok(&format!("busybox@sha256:{HEX}"));
        assert_eq!(r.tag, None);
        assert_eq!(
            r.to_string(),
            format!("docker.io/library/busybox@sha256:{HEX}")
        );
        // Tags may be uppercase (only repository names may not).
        check(
            "lowercase:Uppercase",
            "docker.io",
            "library/lowercase",
            Some("Uppercase"),
            false,
        );
        check("a:_tag", "docker.io", "library/a", Some("_tag"), false);
        let long = "t".repeat(128);
        assert_eq!(ok(&format!("a:{long}")).tag.as_deref(), Some(long.as_str()));
    }

    #[test]
    fn invalid_tags_are_named() {
        assert_eq!(problem("a:"), ReferenceProblem::InvalidTag(String::new()));
        assert_eq!(problem("a:-x"), ReferenceProblem::InvalidTag("-x".into()));
        assert_eq!(problem("a:.x"), ReferenceProblem::InvalidTag(".x".into()));
        assert_eq!(problem("a:x+y"), ReferenceProblem::InvalidTag("x+y".into()));
        assert!(matches!(
            problem(&format!("a:{}", "t".repeat(129))),
            ReferenceProblem::InvalidTag(_)
        ));
    }

    #[test]
    fn invalid_digests_are_named() {
        assert_eq!(
            problem("repo@sha256:ffffffffffffffffffffffffffffffffff"),
            ReferenceProblem::InvalidDigest("sha256:ffffffffffffffffffffffffffffffffff".into())
        );
        assert!(matches!(
            problem(&format!("repo@sha256:{}", HEX.to_uppercase())),
            ReferenceProblem::InvalidDigest(_)
        ));
        assert!(matches!(
            problem(&format!("validname@sha512:{HEX}{HEX}")),
            ReferenceProblem::UnsupportedDigest(_)
        ));
        assert!(matches!(
            problem("repo@sha256"),
            ReferenceProblem::InvalidDigest(_)
        ));
        assert!(matches!(
            problem(&format!("repo@sha256:{HEX}@sha256:{HEX}")),
            ReferenceProblem::InvalidDigest(_)
        ));
    }

    #[test]
    fn invalid_names_are_named() {
        assert_eq!(problem(""), ReferenceProblem::Empty);
        assert_eq!(problem(":justtag"), ReferenceProblem::MissingName);
        assert_eq!(
            problem(&format!("@sha256:{HEX}")),
            ReferenceProblem::MissingName
        );
        assert_eq!(
            problem("1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a"),
            ReferenceProblem::ImageId
        );
        // A 64-hex path component is fine once a registry disambiguates it.
        ok("docker.io/1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a");
        // 63 hex characters are a name.
        ok("dbcc1c35ac38df41fd2f5e4130b32ffdb93ebae8b3dbe638c23575912276fc9");

        assert_eq!(
            problem("Uppercase:tag"),
            ReferenceProblem::Uppercase("library/Uppercase".into())
        );
        assert_eq!(
            problem("docker/Docker"),
            ReferenceProblem::Uppercase("docker/Docker".into())
        );
        assert_eq!(
            problem("test:5000/Uppercase/lowercase:tag"),
            ReferenceProblem::Uppercase("Uppercase/lowercase".into())
        );
        // Docker would take `Docker` as a registry here; see the module docs.
        assert_eq!(
            problem("Docker/docker"),
            ReferenceProblem::Uppercase("Docker/docker".into())
        );

        assert_eq!(problem("docker///docker"), ReferenceProblem::EmptyComponent);
        assert_eq!(problem("docker/"), ReferenceProblem::EmptyComponent);
        assert_eq!(problem("test.com/"), ReferenceProblem::EmptyComponent);
        for bad in [
            "-docker",
            "-docker/docker",
            "docker-/docker",
            "-docker-/docker",
            "____/____",
            "_docker/_docker",
            "x/dock..er",
            "x/dock_.er",
            "x/dock-.er",
            "dock___er/docker",
            "aa/asdf$$^/aa",
        ] {
            assert!(
                matches!(problem(bad), ReferenceProblem::InvalidComponent(_)),
                "{bad}"
            );
        }
        // With a '.', the first component is a registry, and an invalid one.
        for bad in ["dock..er/docker", "dock_.er/docker", "dock-.er/docker"] {
            assert!(
                matches!(problem(bad), ReferenceProblem::InvalidRegistry(_)),
                "{bad}"
            );
        }
        assert!(matches!(
            problem("https://github.com/docker/docker"),
            ReferenceProblem::InvalidRegistry(_)
        ));
        assert!(matches!(
            problem("-docker.io/docker/docker"),
            ReferenceProblem::InvalidRegistry(_)
        ));
        assert!(matches!(
            problem("fc00::1:5000/debian"),
            ReferenceProblem::InvalidRegistry(_)
        ));
        assert!(matches!(
            problem("host:port/x"),
            ReferenceProblem::InvalidRegistry(_)
        ));
    }

    #[test]
    fn separators_in_path_components() {
        for good in [
            "docker-rules/docker",
            "docker---rules/docker",
            "dock__er/docker",
            "d/docker",
            "jess/t",
            "x/a.b_c__d-e--f",
            "thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev",
        ] {
            ok(good);
        }
    }

    #[test]
    fn name_length_limit_counts_the_registry() {
        // 255 characters in all: accepted.
        let path = format!("{}a", "a/".repeat(122)); // 245
        assert_eq!(format!("test.com/{path}").len(), 254);
        ok(&format!("test.com/{path}"));
        ok(&format!("test.com/{path}b:tag-does-not-count"));
        assert_eq!(
            problem(&format!("test.com/{path}bc")),
            ReferenceProblem::NameTooLong(256)
        );
        assert!(matches!(
            problem(&format!("{}a:tag", "a/".repeat(128))),
            ReferenceProblem::NameTooLong(_)
        ));
    }

    #[test]
    fn errors_name_the_reference_and_the_problem() {
        let e = Reference::parse("docker/Docker:1").unwrap_err().to_string();
        assert_eq!(
            e,
            "invalid image reference \"docker/Docker:1\": repository name \"docker/Docker\" must be lowercase"
        );
        let e = Reference::parse("a:-x").unwrap_err().to_string();
        assert!(
            e.contains("\"a:-x\"") && e.contains("tag \"-x\" is invalid"),
            "{e}"
        );
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "docker.io/library/python:3.9-slim",
            "localhost:5000/a/b",
            "us-central1-docker.pkg.dev/p/r/img:v1",
            "[::1]:5000/repo:tag",
        ] {
            assert_eq!(ok(s).to_string(), s);
            assert_eq!(ok(&ok(s).to_string()), ok(s));
        }
    }

    #[test]
    fn helpers() {
        let hub = ok("python");
        assert_eq!(hub.api_host(), "registry-1.docker.io");
        assert_eq!(hub.tag_or_latest(), "latest");
        assert_eq!(hub.name(), "docker.io/library/python");
        let local = ok("localhost:5000/a/b:v2");
        assert_eq!(local.api_host(), "localhost:5000");
        assert_eq!(local.tag_or_latest(), "v2");

        let d = Digest::of(b"x");
        let pinned = local.with_digest(d.clone());
        assert_eq!(pinned.digest, Some(d.clone()));
        assert_eq!(pinned.to_string(), format!("localhost:5000/a/b:v2@{d}"));
        let retagged = pinned.with_tag("v3").unwrap();
        assert_eq!(retagged.to_string(), "localhost:5000/a/b:v3");
        assert!(local.with_tag("-bad").is_err());
    }

    #[test]
    fn loopback_hosts() {
        for yes in [
            "localhost/a",
            "localhost:5000/a",
            "127.0.0.1:5000/a",
            "127.1.2.3/a",
            "[::1]:5000/a",
            "[::1]/a",
        ] {
            assert!(ok(yes).is_loopback(), "{yes}");
        }
        for no in [
            "python",
            "128.0.0.1/a",
            "10.0.0.1:5000/a",
            "[::2]:5000/a",
            "localhost.example.com/a",
            "us-central1-docker.pkg.dev/p/r/i",
        ] {
            assert!(!ok(no).is_loopback(), "{no}");
        }
        assert!(host_is_loopback("LOCALHOST:1"));
    }

    #[test]
    fn host_port_split() {
        assert_eq!(split_host_port("a:1"), ("a", Some("1")));
        assert_eq!(split_host_port("a"), ("a", None));
        assert_eq!(split_host_port("[::1]:5000"), ("[::1]", Some("5000")));
        assert_eq!(split_host_port("[::1]"), ("[::1]", None));
    }
}
