"""The chart's tests: lint, render with the default values and each file in
values/, validate every rendered object against the Kubernetes schemas
(strict: no unknown fields) of the oldest and newest supported versions,
check the restricted Pod Security settings and what each values file must
change, refuse each file in bad-values/ by the schema, and keep the
committed renderings in rendered/ (read by stagetime-kube/tests/rbac.rs)
in sync with the chart.

    python check_chart.py            # check
    UPDATE_RENDERED=1 python ...     # rewrite rendered/ from the chart
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import helm_python as helm
import jsonschema
import kubernetes_validate
import yaml

HERE = Path(__file__).resolve().parent
CHART = HERE.parent / "stagetime"
RELEASE, NAMESPACE = "stagetime", "stagetime"
# The chart's kubeVersion floor and the newest schemas kubernetes-validate ships.
KUBE_VERSIONS = ["1.27.0", kubernetes_validate.utils.latest_version()]
# Committed renderings: the files the Rust RBAC test reads.
RENDERED = {
    "default.yaml": None,
    "cluster-wide.yaml": "cluster-wide.yaml",
    "repo-namespaces.yaml": "repo-namespaces.yaml",
}
# What each bad values file's refusal must name.
BAD = {
    "typo.yaml": "replica",
    "wrong-type.yaml": "/worker/concurrency",
    "cancel-mode.yaml": "/tekton/cancelMode",
    "pod-template-typo.yaml": "nodeSelecter",
    "redis-url.yaml": "/redis/external/url",
    "github-app-without-key.yaml": "server.githubApp.existingSecret",
    "repo-namespace-name.yaml": "/tekton/repoNamespaces/web",
}
# No Kubernetes schema for prometheus-operator's CRD: the fields the chart writes.
SERVICE_MONITOR = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "endpoints"],
            "properties": {
                "selector": {"type": "object", "required": ["matchLabels"]},
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"matchNames": {"type": "array", "items": {"type": "string"}}},
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["port"],
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "interval": {"type": "string", "pattern": "^([0-9]+(ms|s|m|h))+$"},
                        },
                    },
                },
            },
        }
    },
}

failures: list[str] = []


def fail(message: str) -> None:
    failures.append(message)
    print(f"FAIL {message}")


def load_values(path: Path | None) -> dict:
    return {} if path is None else (yaml.safe_load(path.read_text()) or {})


def render(chart: helm.Chart, values: dict) -> list[dict]:
    """The objects of one rendering (NOTES.txt left out)."""
    out = chart.render(values or None, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs = []
    for path in sorted(out):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(out[path]):
            if doc:
                docs.append(doc)
    return docs


def kn(doc: dict) -> str:
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def validate(label: str, doc: dict) -> None:
    if doc["kind"] == "ServiceMonitor":
        try:
            jsonschema.validate(doc, SERVICE_MONITOR)
        except jsonschema.ValidationError as e:
            fail(f"{label}: {kn(doc)}: {e.message} at {list(e.path)}")
        return
    for version in KUBE_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            fail(f"{label}: {kn(doc)} (Kubernetes {version}): {'.'.join(map(str, e.path))}: {e.message}")
        except kubernetes_validate.utils.SchemaNotFoundError as e:
            fail(f"{label}: {kn(doc)}: {e.message}")


def pod_spec(doc: dict) -> dict | None:
    if doc["kind"] in ("Deployment", "StatefulSet"):
        return doc["spec"]["template"]["spec"]
    return None


def check_restricted(label: str, doc: dict) -> None:
    """The restricted Pod Security Standard, as the admission controller checks it."""
    spec = pod_spec(doc)
    if spec is None:
        return
    psc = spec.get("securityContext", {})
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            fail(f"{label}: {kn(doc)}: {key}")
    for c in spec.get("containers", []) + spec.get("initContainers", []):
        sc = c.get("securityContext", {})
        where = f"{label}: {kn(doc)} container {c['name']}"
        if not (sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True):
            fail(f"{where}: runAsNonRoot")
        if sc.get("allowPrivilegeEscalation") is not False:
            fail(f"{where}: allowPrivilegeEscalation must be false")
        if "ALL" not in sc.get("capabilities", {}).get("drop", []):
            fail(f"{where}: capabilities.drop ALL")
        if sc.get("capabilities", {}).get("add"):
            fail(f"{where}: capabilities.add")
        seccomp = sc.get("seccompProfile", psc.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            fail(f"{where}: seccompProfile")
        if sc.get("readOnlyRootFilesystem") is not True:
            fail(f"{where}: readOnlyRootFilesystem")
        if not c.get("resources", {}).get("requests"):
            fail(f"{where}: resource requests")
    for v in spec.get("volumes", []):
        if "hostPath" in v:
            fail(f"{label}: {kn(doc)}: hostPath volume")


def find(docs: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def env_of(doc: dict, container: int = 0) -> dict:
    c = doc["spec"]["template"]["spec"]["containers"][container]
    return {e["name"]: e for e in c.get("env", [])}


def expect(label: str, condition: bool, message: str) -> None:
    if not condition:
        fail(f"{label}: {message}")


def check_expectations(name: str, docs: list[dict]) -> None:
    """What each values file changes (and the defaults keep)."""
    kinds = sorted({d["kind"] for d in docs})
    server = find(docs, "Deployment", "stagetime-server")[0]
    worker = find(docs, "Deployment", "stagetime-worker")[0]
    operator = find(docs, "Deployment", "stagetime-operator")[0]
    server_env, worker_env = env_of(server), env_of(worker)
    if name == "default":
        expect(name, len(find(docs, "StatefulSet", "stagetime-redis")) == 1, "the bundled Redis")
        redis = find(docs, "StatefulSet", "stagetime-redis")[0]
        expect(name, redis["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "8Gi", "an 8Gi PVC")
        expect(name, redis["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Retain", "the PVC is kept")
        conf = find(docs, "ConfigMap", "stagetime-redis")[0]["data"]["redis.conf"]
        expect(name, "appendonly yes" in conf and "maxmemory-policy noeviction" in conf, "AOF, no eviction")
        expect(name, worker_env["REDIS_URL"]["value"] == "redis://:$(REDIS_PASSWORD)@stagetime-redis.stagetime.svc:6379/0", "the bundled Redis's URL")
        expect(name, list(worker_env).index("REDIS_PASSWORD") < list(worker_env).index("REDIS_URL"), "the password before the URL")
        expect(name, "Role" in kinds and "ClusterRole" not in kinds, "namespaced RBAC")
        expect(name, "Ingress" not in kinds and "ServiceMonitor" not in kinds, "no Ingress, no ServiceMonitor")
        expect(name, len(find(docs, "PodDisruptionBudget")) == 2, "PDBs for server and workers")
        expect(name, "STAGETIME_HTTP_LISTEN" not in server_env, "the HTTP listener is off")
        expect(name, worker_env["STAGETIME_CANCEL_MODE"]["value"] == "Cancelled", "cancel mode")
        expect(name, worker_env["STAGETIME_PIPELINERUN_TIMEOUT"]["value"] == "30m", "default timeout")
        expect(name, "STAGETIME_POD_TEMPLATE" not in worker_env, "no pod template: the default fsGroup")
        expect(name, len(find(docs, "Secret", "stagetime-auth")) == 1, "a generated API token")
    elif name == "external-redis":
        expect(name, not find(docs, "StatefulSet"), "no bundled Redis")
        ref = worker_env["REDIS_URL"]["valueFrom"]["secretKeyRef"]
        expect(name, ref == {"name": "managed-redis", "key": "url"}, f"REDIS_URL from the given Secret: {ref}")
        expect(name, worker_env["SSL_CERT_FILE"]["value"] == "/var/run/stagetime/redis-ca/ca.crt", "the CA for rediss://")
        vols = [v.get("secret", {}).get("secretName") for v in worker["spec"]["template"]["spec"]["volumes"]]
        expect(name, "managed-redis-ca" in vols, "the CA Secret mounted")
        expect(name, not find(docs, "Secret", "stagetime-redis"), "no Redis Secret of the chart")
    elif name == "cluster-wide":
        expect(name, "Role" not in kinds and len(find(docs, "ClusterRole")) == 2, "ClusterRoles only")
        args = operator["spec"]["template"]["spec"]["containers"][0]["args"]
        expect(name, "--namespace" not in args, "the operator watches every namespace")
    elif name == "ingress":
        ing = find(docs, "Ingress", "stagetime-server")
        expect(name, len(ing) == 1, "an Ingress")
        backend = ing[0]["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
        expect(name, backend == {"name": "stagetime-server", "port": {"name": "http"}}, f"to the HTTP port: {backend}")
        svc_ports = [p["name"] for p in find(docs, "Service", "stagetime-server")[0]["spec"]["ports"]]
        expect(name, svc_ports == ["grpc", "metrics", "http"], f"service ports {svc_ports}")
        expect(name, server_env["STAGETIME_HTTP_LISTEN"]["value"] == "0.0.0.0:8080", "STAGETIME_HTTP_LISTEN")
        expect(name, server_env["STAGETIME_REPOS"]["value"] == "/etc/stagetime/repos/repos.yaml", "STAGETIME_REPOS")
        repos = yaml.safe_load(find(docs, "ConfigMap", "stagetime-repos")[0]["data"]["repos.yaml"])
        expect(name, repos["repositories"][0]["name"] == "hello-world", "the repositories file")
        mounts = {m["name"]: m["mountPath"] for m in server["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]}
        expect(name, mounts.get("forge") == "/var/run/stagetime/forge" and mounts.get("repos") == "/etc/stagetime/repos", f"mounts {mounts}")
    elif name == "monitoring":
        sms = sorted(d["metadata"]["name"] for d in find(docs, "ServiceMonitor"))
        expect(name, sms == ["stagetime-operator", "stagetime-server", "stagetime-worker"], f"ServiceMonitors {sms}")
        services = {d["metadata"]["name"] for d in find(docs, "Service")}
        expect(name, {"stagetime-worker", "stagetime-operator", "stagetime-server"} <= services, "metrics Services")
        roles = sorted((d["metadata"]["namespace"], d["metadata"]["name"]) for d in find(docs, "Role"))
        expect(name, roles == [("ci-builds", "stagetime-worker"), ("ci-deploys", "stagetime-worker"), ("stagetime", "stagetime-operator")], f"Roles {roles}")
        args = worker["spec"]["template"]["spec"]["containers"][0]["args"]
        expect(name, args[args.index("--namespace") + 1] == "ci-builds", "the workers' namespace")
        expect(name, worker_env["STAGETIME_PIPELINERUN_SERVICE_ACCOUNT"]["value"] == "pipeline-runner", "service account")
        expect(name, worker_env["STAGETIME_CANCEL_MODE"]["value"] == "StoppedRunFinally", "cancel mode")
        pod = yaml.safe_load(worker_env["STAGETIME_POD_TEMPLATE"]["value"])
        expect(name, pod["nodeSelector"] == {"pool": "ci"} and pod["securityContext"]["fsGroup"] == 1001, f"pod template {pod}")
        expect(name, worker_env["REDIS_URL"]["value"].startswith("rediss://"), "TLS to the bundled Redis")
        expect(name, worker_env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "my-redis-password", "the given password Secret")


def rendered_text(docs: list[dict]) -> str:
    """A committed rendering: every object but Secrets (they hold generated values)."""
    keep = [d for d in docs if d["kind"] != "Secret"]
    header = (
        "# Generated by deploy/helm/tests/check_chart.py from deploy/helm/stagetime\n"
        "# (release and namespace `stagetime`); Secrets left out. Do not edit:\n"
        "# UPDATE_RENDERED=1 bash deploy/helm/tests/run.sh\n"
    )
    return header + "".join("---\n" + yaml.safe_dump(d, sort_keys=True) for d in keep)


def main() -> int:
    chart = helm.Chart.load(CHART)
    cases = [("default", None)] + [(p.stem, p) for p in sorted((HERE / "values").glob("*.yaml"))]
    renders: dict[str, list[dict]] = {}
    for name, path in cases:
        values = load_values(path)
        report = helm.lint(CHART, values or None, strict=True, namespace=NAMESPACE, kube_version="v1.27.0")
        for m in report.get("messages", []):
            if m["severity"] >= 2:
                fail(f"lint {name}: {m['path']}: {m['error']}")
        for e in report.get("errors", []):
            fail(f"lint {name}: {e}")
        try:
            docs = render(chart, values)
        except helm.HelmError as e:
            fail(f"render {name}: {e}")
            continue
        renders[name] = docs
        for doc in docs:
            validate(name, doc)
            check_restricted(name, doc)
        check_expectations(name, docs)
        print(f"ok   {name}: {len(docs)} objects rendered, linted and valid")
    # The README's install command, as `helm install --dry-run=client` does it
    # (no cluster: the release is kept in memory).
    readme_set = "image.repository=registry.example.com/stagetime,image.tag=0.1.0"
    config = helm.Config(storage_driver="memory", namespace=NAMESPACE, kube_apiserver="http://127.0.0.1:1")
    try:
        release = config.install(
            str(CHART), RELEASE, helm.parse_set_string(readme_set),
            namespace=NAMESPACE, create_namespace=True, dry_run="client",
        )
        images = {c["image"] for d in yaml.safe_load_all(release["manifest"]) if d and pod_spec(d)
                  for c in pod_spec(d)["containers"] if c["name"] != "redis"}
        expect("install", images == {"registry.example.com/stagetime:0.1.0"}, f"images {images}")
        print(f"ok   helm install --dry-run=client --set {readme_set}")
    except helm.HelmError as e:
        fail(f"install (dry run): {e}")
    finally:
        config.close()

    for crd in chart.crds:
        doc = yaml.safe_load(crd["data"])
        validate("crds", doc)
    print(f"ok   crds: {len(chart.crds)} CustomResourceDefinitions valid")

    for path in sorted((HERE / "bad-values").glob("*.yaml")):
        want = BAD.get(path.name)
        if want is None:
            fail(f"bad-values/{path.name}: add what its refusal must name to BAD")
            continue
        try:
            render(chart, load_values(path))
            fail(f"bad-values/{path.name}: rendered, but the schema must refuse it")
        # Refused by the schema, or by a template's `fail` (a rule across values).
        except (helm.HelmValuesError, helm.HelmRenderError) as e:
            if want not in str(e):
                fail(f"bad-values/{path.name}: the refusal does not name {want!r}: {e}")
            else:
                print(f"ok   bad-values/{path.name} refused: {str(e).strip().splitlines()[-1]}")

    update = os.environ.get("UPDATE_RENDERED") == "1"
    for file, case in RENDERED.items():
        name = "default" if case is None else Path(case).stem
        if name not in renders:
            continue
        want = rendered_text(renders[name])
        target = HERE / "rendered" / file
        have = target.read_text() if target.exists() else ""
        if have == want:
            print(f"ok   rendered/{file} in sync")
        elif update:
            target.write_text(want)
            print(f"updated rendered/{file}")
        else:
            fail(f"rendered/{file} is out of date with the chart: UPDATE_RENDERED=1 bash deploy/helm/tests/run.sh")

    if failures:
        print(f"{len(failures)} chart check(s) failed")
        return 1
    print("chart checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
