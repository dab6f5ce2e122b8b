#!/usr/bin/env bash
# Runs Tally's whole test suite on a Debian machine with a Rust toolchain. Installs what
# the tests need first. Everything runs on loopback; nothing is left running afterwards.
#
#   scripts/test.sh            all tests: fmt, Rust (unit, property, HTTP, crash), clippy,
#                              the Kubernetes manifests, real SDKs, the dashboard
#   TALLY_SKIP_SDK=1 scripts/test.sh   without the SDKs and the dashboard
#   TALLY_SKIP_DEPLOY=1 scripts/test.sh   without the manifests' check
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
ensure_build_deps
ensure_test_services
# The dashboard first (web/ → web/dist), so the binary the tests build embeds it.
scripts/build-web.sh
# Formatting and lints are part of the suite: CI fails on either.
cargo fmt --all --check
# One profile (release) for tests, benchmarks and the binary: the bundled DuckDB is a
# long C++ build, and building it twice (debug and release) would double that.
cargo test --release --workspace --locked "$@"
# Same profile as the tests, so the bundled DuckDB is not built again.
cargo clippy --release --workspace --all-targets --locked -- -D warnings
# deploy/k8s: renders, validates, alert unit tests, every workload started from its pod
# spec, and a real Prometheus over every expression the manifests use (the binary the
# step above built).
if [ "${TALLY_SKIP_DEPLOY:-0}" != 1 ]; then
    TALLY_BIN="$CARGO_TARGET_DIR/release/tally" scripts/check-deploy.sh
fi
# The real Segment/PostHog SDKs (npm, PyPI) and the browser tracker in Chromium, against
# the binary the step above built.
if [ "${TALLY_SKIP_SDK:-0}" != 1 ]; then
    scripts/sdk-test.sh
    # The dashboard in headless Chromium against the same binary (screenshots: the path
    # is printed at the end).
    scripts/web-test.sh
fi
