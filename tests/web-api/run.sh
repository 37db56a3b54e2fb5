#!/usr/bin/env bash
# Checks the web JSON API against its own OpenAPI description with
# schemathesis (pinned in requirements.txt, in a venv made here): a live
# `server` (runs in a real redis-server when REDIS_URL is set, else in
# memory) with an API token, a few runs submitted through the CLI, then
# every operation but the never-ending event streams with bounded
# generated examples — every check (no 5xx, documented status codes,
# content types and schemas, bad input refused, good input accepted).
#
#   STAGETIME_WEB_API_VENV   where the venv goes (default: <workspace>/target/web-api-venv)
#   SCHEMATHESIS_EXAMPLES    examples per operation (default: 100)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
workspace="$(cd "$here/../.." && pwd)"
venv="${STAGETIME_WEB_API_VENV:-$workspace/target/web-api-venv}"
python="${PYTHON:-python3}"
req="$here/requirements.txt"
stamp="$venv/.stagetime-requirements"

mkdir -p "$(dirname "$venv")"
if ! [[ -x "$venv/bin/st" && -f "$stamp" ]] || ! cmp -s "$req" "$stamp"; then
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"
    cp "$req" "$stamp"
fi

cd "$workspace"
cargo build --quiet --all-features --example server --example stagetime
bin="${CARGO_TARGET_DIR:-$workspace/target}/debug/examples"
work="$(mktemp -d)"
token="schemathesis-$$"
store=(--memory)
if [[ -n "${REDIS_URL:-}" ]]; then
    store=(--redis-url "$REDIS_URL" --redis-prefix "web-api-$$")
fi
STAGETIME_AUTH_TOKEN="$token" "$bin/server" "${store[@]}" --listen 127.0.0.1:0 \
    --metrics-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 >"$work/server.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 100); do
    grep -q '^metrics listening on' "$work/server.log" && break
    sleep 0.1
done
http="$(sed -n 's/^http listening on //p' "$work/server.log")"
grpc="$(sed -n 's/^grpc listening on //p' "$work/server.log")"
[[ -n "$http" && -n "$grpc" ]] || { cat "$work/server.log"; echo "the server did not start" >&2; exit 1; }

# Some runs to read (queued: no worker runs them).
for i in 1 2 3; do
    cat >"$work/run$i.yaml" <<EOF
repo: web-api
commit: c0ffee$i
branch: main
tasks:
  - {name: build, command: "true"}
  - {name: test, stage: 1, command: "true", can_fail: true}
EOF
    STAGETIME_AUTH_TOKEN="$token" "$bin/stagetime" submit --server "http://$grpc" "$work/run$i.yaml" >/dev/null
done

# From the scratch directory: schemathesis keeps a cache where it runs.
cd "$work"
"$venv/bin/st" run "http://$http/api/v1/openapi.json" \
    --url "http://$http" \
    --header "Authorization: Bearer $token" \
    --exclude-path-regex '/events' \
    --checks all \
    --phases examples,coverage,fuzzing \
    --max-examples "${SCHEMATHESIS_EXAMPLES:-100}" \
    --request-timeout 10 \
    --seed 1 \
    --no-color
