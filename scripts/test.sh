#!/usr/bin/env bash
# The test command: install dependencies, build (or reuse) the python:3.9-slim fixture, run every
# test target, then each criterion benchmark once. Extra arguments go to `cargo test` (e.g. a
# name filter: scripts/test.sh fixture; the benchmarks are skipped then).
#   VXBUILD_BASE_LAYOUT   use this OCI layout as the base fixture instead of building one
#   VXBUILD_TEST_THREADS  test threads (default 2: the machines have 2 cores, and each end-to-end
#                         test runs a registry, skopeo, umoci or pip of its own)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/install-deps.sh

if [[ -z ${VXBUILD_BASE_LAYOUT:-} ]]; then
    VXBUILD_BASE_LAYOUT="$(tests/fixtures/base-image.sh | tail -n1)"
fi
export VXBUILD_BASE_LAYOUT
echo "test.sh: base fixture $VXBUILD_BASE_LAYOUT" >&2

cargo test --lib --bins --tests "$@" -- --test-threads="${VXBUILD_TEST_THREADS:-2}"
# The criterion benches, each benchmark run once as a test (criterion takes no libtest flags).
if (($# == 0)); then
    cargo test --benches
fi
