#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, docs, and every test
# with its servers (a real redis-server, the Kubernetes-API emulator) — tests
# that would otherwise skip fail here (STAGETIME_REQUIRE_SERVERS=1).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# redis-server for stagetime-redis and the end-to-end tests.
if ! command -v redis-server >/dev/null 2>&1 && [ -z "${REDIS_SERVER:-}" ]; then
    echo "== installing redis-server"
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq redis-server >/dev/null
fi

# chromium + chromedriver for the web page's browser test (tests/web.rs).
if ! command -v chromedriver >/dev/null 2>&1 && [ -z "${CHROMEDRIVER:-}" ]; then
    echo "== installing chromium and chromium-driver"
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq chromium chromium-driver >/dev/null
fi

# The Kubernetes-API emulator (kmock, pinned) in a venv.
echo "== preparing the Kubernetes-API emulator"
bash stagetime-kube/tests/emulator/setup.sh

# The Helm chart: lint, render (default + values files) through Helm v4 as a
# library, Kubernetes schema validation, bad values refused, rendered/ in sync.
echo "== helm chart"
bash deploy/helm/tests/run.sh

export STAGETIME_REQUIRE_SERVERS=1
export RUST_BACKTRACE=1

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --all-features -- -D warnings
echo "== cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --all-features
echo "== cargo test"
# A hung test fails the run after 25 minutes instead of holding CI.
timeout 25m cargo test --workspace --all-features
echo "== web API against its OpenAPI description (schemathesis)"
timeout 10m bash tests/web-api/run.sh
echo "== all checks passed"
