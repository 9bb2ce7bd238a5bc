#!/usr/bin/env bash
# Install what the tests need, from Debian's packages. Idempotent: when every command is already
# on PATH, apt is not touched at all. Needs root (or sudo) only when something is missing.
set -euo pipefail

# command → package that provides it
declare -A needs=(
    [docker-registry]=docker-registry # the registry the end-to-end tests push to
    [skopeo]=skopeo                   # independent client: inspect, copy (verifies digests)
    [umoci]=umoci                     # builds the base fixture layout; unpacks images in tests
    [buildah]=buildah
    [bwrap]=bubblewrap                # vxbuild's sandbox; runs unpacked images in tests
    [debootstrap]=debootstrap         # the base fixture's Debian root
    [qemu-aarch64-static]=qemu-user-static
    [hyperfine]=hyperfine
    [pigz]=pigz
    [update-ca-certificates]=ca-certificates
    [flock]=util-linux
    [htpasswd]=apache2-utils          # registries with basic auth
    [curl]=curl                       # raw registry API calls in tests
    [openssl]=openssl                 # RSA service-account keys for the Google credential tests
    [strip]=binutils                  # the base fixture strips CPython like the official image
    [tar]=tar
    [python3]=python3                 # the host python that checks made wheels
)

missing=()
for cmd in "${!needs[@]}"; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("${needs[$cmd]}")
done
# Host python must have pip (the wheel self-test installs with it).
if command -v python3 >/dev/null 2>&1 && ! python3 -m pip --version >/dev/null 2>&1; then
    missing+=(python3-pip)
fi

if ((${#missing[@]} == 0)); then
    echo "install-deps: all test dependencies present" >&2
    exit 0
fi

mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
echo "install-deps: installing ${missing[*]}" >&2
sudo=()
[[ $(id -u) == 0 ]] || sudo=(sudo)
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
