#!/usr/bin/env bash
# The Helm chart's tests (check_chart.py): lint, render with the default and
# each values/ file through Helm v4 as a library (helm-python-sdk, no helm
# binary), validate every object against the Kubernetes schemas, refuse
# bad-values/, keep rendered/ in sync. Creates the venv first; idempotent:
# an up-to-date venv is reused.
#
#   STAGETIME_HELM_VENV   where the venv goes (default: <workspace>/target/helm-venv)
#   PYTHON                the interpreter to build it from (default: python3)
#   UPDATE_RENDERED=1     rewrite rendered/ instead of failing when it drifted
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
workspace="$(cd "$here/../../.." && pwd)"
venv="${STAGETIME_HELM_VENV:-$workspace/target/helm-venv}"
python="${PYTHON:-python3}"
req="$here/requirements.txt"
stamp="$venv/.stagetime-requirements"

mkdir -p "$(dirname "$venv")"
if command -v flock >/dev/null 2>&1; then
    exec 9>"$venv.lock"
    flock 9
fi
if ! [[ -x "$venv/bin/python" && -f "$stamp" ]] || ! cmp -s "$req" "$stamp"; then
    if ! command -v "$python" >/dev/null 2>&1; then
        echo "run.sh: $python not found; install Python 3.11+ (with venv) first" >&2
        exit 1
    fi
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"
    cp "$req" "$stamp"
fi
exec "$venv/bin/python" "$here/check_chart.py"
