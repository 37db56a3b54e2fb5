#!/usr/bin/env bash
# Creates the Python venv of the Kubernetes-API emulator (kmock, pinned) used by
# stagetime-kube's integration tests. Idempotent: does nothing when the venv
# already has the pinned versions.
#
#   STAGETIME_KMOCK_VENV   where the venv goes (default: <workspace>/target/kmock-venv)
#   PYTHON                 the interpreter to build it from (default: python3)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
workspace="$(cd "$here/../../.." && pwd)"
venv="${STAGETIME_KMOCK_VENV:-$workspace/target/kmock-venv}"
python="${PYTHON:-python3}"
req="$here/requirements.txt"
stamp="$venv/.stagetime-requirements"

mkdir -p "$(dirname "$venv")"
# Test binaries may run this at the same time: one builds, the others wait.
if command -v flock >/dev/null 2>&1; then
    exec 9>"$venv.lock"
    flock 9
fi

if [[ -x "$venv/bin/python" && -f "$stamp" ]] && cmp -s "$req" "$stamp"; then
    echo "kmock venv up to date: $venv"
    exit 0
fi

if ! command -v "$python" >/dev/null 2>&1; then
    echo "setup.sh: $python not found; install Python 3.11+ (with venv) first" >&2
    exit 1
fi

"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"
"$venv/bin/python" -c 'import kmock, aiohttp, jsonpatch; print("kmock", kmock.__version__)'
cp "$req" "$stamp"
echo "kmock venv ready: $venv"
