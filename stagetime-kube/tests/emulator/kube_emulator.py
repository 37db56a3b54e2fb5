"""A Kubernetes-API emulator for stagetime-kube's integration tests.

Built on the PyPI package ``kmock`` (pinned in ``requirements.txt``): kmock's
aiohttp server, request parsing (resource / namespace / name / action from the
URL), API discovery (``/api``, ``/apis``, ``/apis/<group>/<version>``) and
reaction DSL are used as they are. kmock's own in-memory object store falls
short of what a Kubernetes client relies on, so this subclass replaces it:

* objects get ``metadata.uid``, ``resourceVersion`` (one global counter, like
  etcd's revision), ``creationTimestamp`` and ``generation``;
* list and watch honour ``labelSelector`` (``=``, ``==``, ``!=``, ``in``,
  ``notin``, exists, ``!``exists) and ``fieldSelector`` on
  ``metadata.name`` / ``metadata.namespace``;
* errors are standard ``Status`` objects (reasons ``NotFound``,
  ``AlreadyExists``, ``Conflict``, ``UnsupportedMediaType``, ``Expired``);
* watches start at ``resourceVersion`` and replay the history after it; a
  resourceVersion older than the kept history gets a ``410 Expired`` ERROR
  event (so clients re-list); ``timeoutSeconds`` ends a watch;
* PATCH understands ``application/merge-patch+json`` (RFC 7386), strategic
  merge (treated as a merge patch) and ``application/json-patch+json``; the
  ``status`` subresource is separate from the main resource as for a CRD
  with ``subresources: {status: {}}``; PUT replaces with an optimistic
  ``resourceVersion`` check;
* DELETE records the ``propagationPolicy`` (query or body) and honours
  finalizers;
* discovery lists short names on the resource only, not on its ``/status``
  subresource (so ``kubectl get pr`` is unambiguous).

Test controls under ``/_emulator/`` (not part of the Kubernetes API):
``GET /_emulator/requests`` (every API request seen: method, path, query,
content type, the ``X-Stagetime-Actor`` header tests use to tell clients
apart, body), ``POST /_emulator/expire`` (forget the watch history and
close every open watch: clients resuming from an old resourceVersion get 410),
``POST /_emulator/close-watches`` (end every open watch normally),
``POST /_emulator/pod-log?namespace=NS&pod=POD&container=C`` (append the
body to that container's log).

Pod logs (kmock has none): ``GET /api/v1/namespaces/NS/pods/POD/log`` with
``container`` (required when the pod has several) and ``follow`` serves
what tests appended, as an API server does: 400 for a container still
waiting to start (no running/terminated state in ``status.containerStatuses``
and the pod not Succeeded/Failed); with ``follow`` the body stays open and
streams what is appended until the container is terminated or the pod is
deleted.

Run: ``python kube_emulator.py [--host 127.0.0.1] [--port 0]``. It prints
``LISTENING http://HOST:PORT`` once it serves, and runs until SIGTERM/SIGINT;
with ``--exit-on-stdin-eof`` it also exits when its standard input closes (so
it never outlives the test process that started it).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import copy
import datetime
import json
import re
import signal
import sys
import uuid
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import kmock
from kmock._internal import apps, rendering

HISTORY_LIMIT = 10_000


def _now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime('%Y-%m-%dT%H:%M:%SZ')


def _status_body(code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        'apiVersion': 'v1',
        'kind': 'Status',
        'metadata': {},
        'status': 'Failure',
        'message': message,
        'reason': reason,
        'details': details or {},
        'code': code,
    }


def _status(code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> kmock.KubernetesError:
    """An error to raise: rendered as a standard Status object by ``_render_error``.

    (Errors are raised rather than returned as ``kmock.Response`` because a
    returned Response's status sticks to kmock's reaction object and would
    leak into later answers of the same verb.)
    """
    return kmock.KubernetesError(status=code, reason=reason, message=message, details=details or {})


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _missing_is_null(obj: Any, patch: Any) -> Any:
    """Drops ``test`` operations that compare a missing member with ``null``.

    The API server's JSON patch (evanphx/json-patch) treats a missing member as
    ``null`` in a ``test``; kube-rs's finalizer helper relies on it
    (``test /metadata/finalizers == null`` before adding the first finalizer).
    """
    if not isinstance(patch, list):
        return patch
    out = []
    for op in patch:
        if isinstance(op, dict) and op.get('op') == 'test' and op.get('value', 0) is None:
            try:
                jsonpatch.JsonPointer(op.get('path', '')).resolve(obj)
            except (jsonpatch.JsonPointerException, KeyError, IndexError, TypeError):
                continue
        out.append(op)
    return out


_REQ = re.compile(r'^\s*(!?)\s*([A-Za-z0-9_./-]+)\s*(?:(==|=|!=|\s+in\s+|\s+notin\s+)\s*(.*?))?\s*$')


def _split_selector(text: str) -> list[str]:
    """Splits on commas outside parentheses."""
    parts, depth, cur = [], 0, ''
    for ch in text:
        if ch == '(':
            depth += 1
        elif ch == ')':
            depth -= 1
        if ch == ',' and depth == 0:
            parts.append(cur)
            cur = ''
        else:
            cur += ch
    if cur.strip():
        parts.append(cur)
    return [p for p in parts if p.strip()]


def parse_label_selector(text: str | None):
    """Returns a predicate over a labels dict, or raises ValueError."""
    if not text:
        return lambda labels: True
    checks = []
    for part in _split_selector(text):
        m = _REQ.match(part)
        if not m:
            raise ValueError(f'unable to parse requirement: {part!r}')
        neg, key, op, value = m.group(1), m.group(2), (m.group(3) or '').strip(), m.group(4)
        if not op:
            checks.append((lambda k, n: lambda l: (k in l) != n)(key, bool(neg)))
        elif op in ('=', '=='):
            checks.append((lambda k, v: lambda l: l.get(k) == v)(key, value.strip()))
        elif op == '!=':
            checks.append((lambda k, v: lambda l: l.get(k) != v)(key, value.strip()))
        else:
            values = {v.strip() for v in value.strip().strip('()').split(',') if v.strip()}
            if op == 'in':
                checks.append((lambda k, vs: lambda l: l.get(k) in vs)(key, values))
            else:
                checks.append((lambda k, vs: lambda l: l.get(k) not in vs)(key, values))
    return lambda labels: all(c(labels) for c in checks)


def parse_field_selector(text: str | None):
    if not text:
        return lambda obj: True
    checks = []
    for part in _split_selector(text):
        m = re.match(r'^\s*([A-Za-z0-9_.]+)\s*(==|=|!=)\s*(.*?)\s*$', part)
        if not m:
            raise ValueError(f'unable to parse field selector: {part!r}')
        path, op, value = m.groups()

        def get(obj: dict[str, Any], path: str = path) -> Any:
            cur: Any = obj
            for seg in path.split('.'):
                cur = cur.get(seg) if isinstance(cur, dict) else None
            return cur

        if op == '!=':
            checks.append((lambda g, v: lambda o: g(o) != v)(get, value))
        else:
            checks.append((lambda g, v: lambda o: g(o) == v)(get, value))
    return lambda obj: all(c(obj) for c in checks)


@attrs.define(kw_only=True)
class StagetimeEmulator(kmock.KubernetesEmulator):
    """kmock's KubernetesEmulator with a store that behaves like an API server."""

    _store: dict[tuple[Any, str | None, str], dict[str, Any]] = attrs.field(factory=dict, init=False)
    _rv: int = attrs.field(default=0, init=False)
    _history: list[tuple[int, Any, str, dict[str, Any]]] = attrs.field(factory=list, init=False)
    _oldest_rv: int = attrs.field(default=0, init=False)
    _changed: asyncio.Event = attrs.field(factory=asyncio.Event, init=False)
    _watch_generation: int = attrs.field(default=0, init=False)
    _log: list[dict[str, Any]] = attrs.field(factory=list, init=False)
    _pod_logs: dict[tuple[str, str, str], bytearray] = attrs.field(factory=dict, init=False)

    # -- plumbing ---------------------------------------------------------

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        # kmock accumulates served errors to re-raise them at exit; an API
        # server answers errors and goes on.
        if self._errors:
            self._errors[-1].clear()
        if request.url.path.startswith('/_emulator/'):
            return await self._control(request)
        if request.resource is not None:
            self._log.append({
                'method': str(request.method.value),
                'path': request.url.path,
                'query': dict(request.params),
                'contentType': request.headers.get('Content-Type', ''),
                'actor': next((v for k, v in request.headers.items() if k.lower() == 'x-stagetime-actor'), ''),
                'body': request.text,
            })
        if (request.resource is not None and request.resource.plural == 'pods'
                and request.subresource == 'log' and request.method.value == 'GET'):
            return await self._serve_pod_log(request)
        if request.resource is not None and request.method.value == 'PUT' and request.name:
            return await rendering.Response(payload=await self._serve_replace(request))(request)
        # Skip KubernetesEmulator._handle (kmock's store); dispatch reactions and fallbacks.
        return await apps.RawHandler._handle(self, request)

    async def _control(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        path = request.url.path
        if path == '/_emulator/requests':
            return aiohttp.web.json_response(self._log)
        if path == '/_emulator/expire':
            # Like an etcd compaction past everything any client has seen:
            # even the newest resourceVersion handed out so far is too old.
            self._rv += 1
            self._oldest_rv = self._rv + 1
            self._history.clear()
            self._close_watches()
            return aiohttp.web.json_response({'oldest': self._oldest_rv})
        if path == '/_emulator/pod-log':
            key = (request.params.get('namespace', ''), request.params.get('pod', ''),
                   request.params.get('container', ''))
            self._pod_logs.setdefault(key, bytearray()).extend(request.body)
            self._notify()
            return aiohttp.web.json_response({'bytes': len(self._pod_logs[key])})
        if path == '/_emulator/close-watches':
            self._close_watches()
            return aiohttp.web.json_response({})
        return aiohttp.web.json_response({'error': 'unknown control'}, status=404)

    @staticmethod
    def _container_state(pod: dict[str, Any], container: str) -> str:
        """'waiting', 'running' or 'terminated', from the pod's status."""
        status = pod.get('status') or {}
        if status.get('phase') in ('Succeeded', 'Failed'):
            return 'terminated'
        for c in status.get('containerStatuses') or []:
            if c.get('name') == container:
                state = c.get('state') or {}
                if 'terminated' in state:
                    return 'terminated'
                if 'running' in state:
                    return 'running'
        return 'waiting'

    async def _serve_pod_log(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        key = (request.resource, request.namespace, request.name)
        pod = self._store.get(key)
        if pod is None:
            raise self._not_found(request)
        containers = [c.get('name') for c in (pod.get('spec') or {}).get('containers') or []]
        container = request.params.get('container')
        if not container:
            if len(containers) != 1:
                raise _status(400, 'BadRequest',
                              f'a container name must be specified for pod {request.name}, '
                              f'choose one of: [{" ".join(containers)}]')
            container = containers[0]
        if container not in containers:
            raise _status(400, 'BadRequest', f'container {container} is not valid for pod {request.name}')
        if self._container_state(pod, container) == 'waiting':
            raise _status(400, 'BadRequest',
                          f'container "{container}" in pod "{request.name}" is waiting to start: PodInitializing')
        follow = request.params.get('follow') in ('true', '1')
        log_key = (request.namespace, request.name, container)
        response = aiohttp.web.StreamResponse(status=200, headers={'Content-Type': 'text/plain'})
        await response.prepare(request._raw_request)
        sent = 0
        while True:
            changed = self._changed
            pod = self._store.get(key)
            over = not follow or pod is None or self._container_state(pod, container) == 'terminated'
            text = self._pod_logs.get(log_key, bytearray())
            if len(text) > sent:
                await response.write(bytes(text[sent:]))
                sent = len(text)
            if over:
                break
            try:
                await asyncio.wait_for(changed.wait(), timeout=30)
            except asyncio.TimeoutError:
                pass
        await response.write_eof()
        return response

    def _close_watches(self) -> None:
        self._watch_generation += 1
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _record(self, kind: str, resource: Any, obj: dict[str, Any]) -> None:
        self._history.append((self._rv, resource, kind, copy.deepcopy(obj)))
        if len(self._history) > HISTORY_LIMIT:
            dropped = self._history.pop(0)
            self._oldest_rv = dropped[0] + 1
        self._notify()

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    @staticmethod
    def _what(request: rendering.Request) -> dict[str, Any]:
        res = request.resource
        return {'name': request.name, 'group': res.group if res else '', 'kind': res.plural if res else ''}

    def _qualified(self, request: rendering.Request) -> str:
        res = request.resource
        return f'{res.plural}.{res.group}' if res and res.group else (res.plural if res else '?')

    def _not_found(self, request: rendering.Request, name: str | None = None) -> kmock.KubernetesError:
        name = name or request.name
        return _status(404, 'NotFound', f'{self._qualified(request)} "{name}" not found', self._what(request))

    def _matches(self, request: rendering.Request, key: tuple[Any, str | None, str], obj: dict[str, Any],
                 labels_ok, fields_ok) -> bool:
        resource, namespace, name = key
        if resource != request.resource:
            return False
        if request.namespace is not None and namespace != request.namespace:
            return False
        if request.name is not None and name != request.name:
            return False
        return labels_ok(obj.get('metadata', {}).get('labels') or {}) and fields_ok(obj)

    def _selectors(self, request: rendering.Request):
        return (parse_label_selector(request.params.get('labelSelector')),
                parse_field_selector(request.params.get('fieldSelector')))

    @staticmethod
    def _data(request: rendering.Request) -> Any:
        try:
            return json.loads(request.body or b'null')
        except ValueError:
            return None

    # -- verbs ------------------------------------------------------------

    async def _serve_version(self, request: rendering.Request) -> rendering.Payload:
        # kmock repeats short names and categories on subresources (`pipelineruns/status`),
        # which makes `kubectl get pr` ambiguous; an API server lists them on the resource only.
        listing = await super()._serve_version(request)
        for res in listing.get('resources', []):
            if '/' in res.get('name', ''):
                res['shortNames'] = []
                res['categories'] = []
                res['verbs'] = ['get', 'patch', 'update']
        return listing

    async def _serve_list(self, request: rendering.Request) -> rendering.Payload:
        try:
            labels_ok, fields_ok = self._selectors(request)
        except ValueError as e:
            raise _status(400, 'BadRequest', str(e))
        items = [copy.deepcopy(obj) for key, obj in sorted(self._store.items(), key=lambda kv: kv[0][1:])
                 if self._matches(request, key, obj, labels_ok, fields_ok)]
        res = request.resource
        kind = self._kind(res)
        return {
            'apiVersion': f'{res.group}/{res.version}' if res.group else res.version,
            'kind': f'{kind}List',
            'metadata': {'resourceVersion': str(self._rv)},
            'items': items,
        }

    def _kind(self, res: Any) -> str:
        for declared, info in self.resources.items():
            if declared == res and info.kind:
                return info.kind
        return res.plural.capitalize()

    async def _serve_watch(self, request: rendering.Request):
        try:
            labels_ok, fields_ok = self._selectors(request)
        except ValueError as e:
            yield {'type': 'ERROR', 'object': _status_body(400, 'BadRequest', str(e))}
            return
        timeout = float(request.params.get('timeoutSeconds') or 3600)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        generation = self._watch_generation
        rv_text = request.params.get('resourceVersion') or '0'
        yield b''  # send the headers now
        if rv_text == '0':
            since = self._rv
            for key, obj in sorted(self._store.items(), key=lambda kv: kv[0][1:]):
                if self._matches(request, key, obj, labels_ok, fields_ok):
                    yield {'type': 'ADDED', 'object': copy.deepcopy(obj)}
        else:
            try:
                since = int(rv_text)
            except ValueError:
                yield {'type': 'ERROR', 'object': _status_body(400, 'BadRequest', f'invalid resourceVersion {rv_text!r}')}
                return
            if since + 1 < self._oldest_rv:
                yield {'type': 'ERROR', 'object': _status_body(
                    410, 'Expired', f'too old resource version: {since} ({self._oldest_rv})')}
                return
        while True:
            # Take the wake-up event before reading the history: anything
            # recorded while events are being sent (each yield may suspend)
            # sets it, so nothing recorded meanwhile waits for a later change.
            changed = self._changed
            if since + 1 < self._oldest_rv:
                yield {'type': 'ERROR', 'object': _status_body(
                    410, 'Expired', f'too old resource version: {since} ({self._oldest_rv})')}
                return
            if generation != self._watch_generation:
                return
            start = bisect.bisect_right(self._history, since, key=lambda entry: entry[0])
            for rv, resource, kind, obj in self._history[start:]:
                since = rv
                meta = obj.get('metadata', {})
                key = (resource, meta.get('namespace'), meta.get('name'))
                if self._matches(request, key, obj, labels_ok, fields_ok):
                    yield {'type': kind, 'object': obj}
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            if changed.is_set():
                continue
            try:
                await asyncio.wait_for(changed.wait(), timeout=min(remaining, 30))
            except asyncio.TimeoutError:
                pass

    async def _serve_fetch(self, request: rendering.Request) -> rendering.Payload:
        obj = self._store.get((request.resource, request.namespace, request.name))
        if obj is None:
            raise self._not_found(request)
        return copy.deepcopy(obj)

    async def _serve_create(self, request: rendering.Request) -> rendering.Payload:
        obj = self._data(request)
        if not isinstance(obj, dict):
            raise _status(400, 'BadRequest', 'the body is not a JSON object')
        meta = obj.setdefault('metadata', {})
        if not meta.get('name'):
            if meta.get('generateName'):
                meta['name'] = meta['generateName'] + uuid.uuid4().hex[:5]
            else:
                raise _status(422, 'Invalid', 'metadata.name: Required value')
        if request.namespace is not None:
            if meta.get('namespace') not in (None, request.namespace):
                raise _status(400, 'BadRequest', 'the namespace of the object does not match the namespace of the request')
            meta['namespace'] = request.namespace
        key = (request.resource, meta.get('namespace'), meta['name'])
        if key in self._store:
            raise _status(409, 'AlreadyExists',
                           f'{self._qualified(request)} "{meta["name"]}" already exists',
                           dict(self._what(request), name=meta['name']))
        if request.params.get('dryRun'):
            return obj
        meta['uid'] = str(uuid.uuid4())
        meta['creationTimestamp'] = _now()
        meta['generation'] = 1
        meta['resourceVersion'] = self._next_rv()
        meta.pop('deletionTimestamp', None)
        self._store[key] = obj
        self._record('ADDED', request.resource, obj)
        # 201 like an API server (a status on a returned Response sticks to the
        # reaction, which is harmless here: every create that gets this far is a 201).
        return rendering.Response(status=201, payload=copy.deepcopy(obj))

    def _apply(self, request: rendering.Request, new: dict[str, Any], old: dict[str, Any]) -> rendering.Payload:
        """Stores `new` as the next version of `old` (subresource rules applied)."""
        key = (request.resource, request.namespace, request.name)
        if request.subresource == 'status':
            stored = copy.deepcopy(old)
            if 'status' in new:
                stored['status'] = new['status']
            else:
                stored.pop('status', None)
        else:
            stored = copy.deepcopy(new)
            if 'status' in old:
                stored['status'] = old['status']
            else:
                stored.pop('status', None)
            # Identity fields are the server's.
            for field in ('uid', 'creationTimestamp', 'name', 'namespace', 'deletionTimestamp'):
                if field in old.get('metadata', {}):
                    stored.setdefault('metadata', {})[field] = old['metadata'][field]
            if stored.get('spec') != old.get('spec'):
                stored['metadata']['generation'] = old['metadata'].get('generation', 1) + 1
            else:
                stored['metadata']['generation'] = old['metadata'].get('generation', 1)
        stored['metadata']['resourceVersion'] = self._next_rv()
        meta = stored['metadata']
        if meta.get('deletionTimestamp') and not meta.get('finalizers'):
            del self._store[key]
            self._record('DELETED', request.resource, stored)
        else:
            self._store[key] = stored
            self._record('MODIFIED', request.resource, stored)
        return copy.deepcopy(stored)

    async def _serve_update(self, request: rendering.Request) -> rendering.Payload:
        key = (request.resource, request.namespace, request.name)
        old = self._store.get(key)
        if old is None:
            raise self._not_found(request)
        patch = self._data(request)
        ctype = request.headers.get('Content-Type', '').split(';')[0].strip()
        if ctype in ('application/merge-patch+json', 'application/strategic-merge-patch+json'):
            if not isinstance(patch, dict):
                raise _status(400, 'BadRequest', 'a merge patch must be a JSON object')
            want_rv = (patch.get('metadata') or {}).get('resourceVersion')
            if want_rv is not None and want_rv != old['metadata']['resourceVersion']:
                raise self._conflict(request)
            new = merge_patch(old, patch)
        elif ctype == 'application/json-patch+json':
            try:
                new = jsonpatch.apply_patch(old, _missing_is_null(old, patch))
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as e:
                raise _status(422, 'Invalid', f'the JSON patch does not apply: {e}')
        else:
            raise _status(415, 'UnsupportedMediaType', f'the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (got {ctype!r})')
        return self._apply(request, new, old)

    def _conflict(self, request: rendering.Request) -> kmock.KubernetesError:
        return _status(409, 'Conflict',
                       f'Operation cannot be fulfilled on {self._qualified(request)} "{request.name}": '
                       'the object has been modified; please apply your changes to the latest version and try again',
                       self._what(request))

    async def _serve_replace(self, request: rendering.Request) -> rendering.Payload:
        key = (request.resource, request.namespace, request.name)
        old = self._store.get(key)
        if old is None:
            raise self._not_found(request)
        new = self._data(request)
        if not isinstance(new, dict):
            raise _status(400, 'BadRequest', 'the body is not a JSON object')
        want_rv = (new.get('metadata') or {}).get('resourceVersion')
        if want_rv and want_rv != old['metadata']['resourceVersion']:
            raise self._conflict(request)
        return self._apply(request, new, old)

    async def _serve_delete(self, request: rendering.Request) -> rendering.Payload:
        key = (request.resource, request.namespace, request.name)
        old = self._store.get(key)
        if old is None:
            raise self._not_found(request)
        body = self._data(request) or {}
        policy = request.params.get('propagationPolicy') or (body.get('propagationPolicy') if isinstance(body, dict) else None)
        if policy not in (None, 'Background', 'Foreground', 'Orphan'):
            raise _status(400, 'BadRequest', f'invalid propagationPolicy {policy!r}')
        meta = old['metadata']
        if meta.get('finalizers'):
            if not meta.get('deletionTimestamp'):
                meta['deletionTimestamp'] = _now()
                meta['resourceVersion'] = self._next_rv()
                self._record('MODIFIED', request.resource, old)
            return copy.deepcopy(old)
        del self._store[key]
        gone = copy.deepcopy(old)
        gone['metadata']['resourceVersion'] = self._next_rv()
        self._record('DELETED', request.resource, gone)
        return gone


async def serve(host: str, port: int, exit_on_stdin_eof: bool) -> None:
    emulator = StagetimeEmulator()
    emulator.resources['tekton.dev/v1/pipelineruns'] = kmock.ResourceInfo(
        kind='PipelineRun', singular='pipelinerun', namespaced=True,
        verbs={'create', 'delete', 'get', 'list', 'patch', 'update', 'watch'},
        shortnames={'pr'}, categories={'tekton', 'tekton-pipelines'}, subresources={'status'})
    # The operator's custom resources (stagetime-kube/src/crd.rs): RevisionRuns
    # have a status subresource and finalizers; Repos and templates are plain.
    group = 'stagetime.sthings.tiab.ssc.sva.de/v1beta1'
    emulator.resources[f'{group}/revisionruns'] = kmock.ResourceInfo(
        kind='RevisionRun', singular='revisionrun', namespaced=True,
        verbs={'create', 'delete', 'get', 'list', 'patch', 'update', 'watch'},
        shortnames={'rr'}, categories={'stagetime'}, subresources={'status'})
    emulator.resources[f'{group}/repos'] = kmock.ResourceInfo(
        kind='Repo', singular='repo', namespaced=True,
        verbs={'create', 'delete', 'get', 'list', 'patch', 'update', 'watch'},
        categories={'stagetime'})
    emulator.resources[f'{group}/pipelineruntemplates'] = kmock.ResourceInfo(
        kind='PipelineRunTemplate', singular='pipelineruntemplate', namespaced=True,
        verbs={'create', 'delete', 'get', 'list', 'patch', 'update', 'watch'},
        shortnames={'prt'}, categories={'stagetime'})
    emulator.resources['v1/pods'] = kmock.ResourceInfo(
        kind='Pod', singular='pod', namespaced=True,
        verbs={'create', 'delete', 'get', 'list', 'patch', 'update', 'watch'},
        shortnames={'po'}, subresources={'status', 'log'})
    emulator.resources['v1/configmaps'] = kmock.ResourceInfo(
        kind='ConfigMap', singular='configmap', namespaced=True,
        verbs={'create', 'delete', 'get', 'list', 'patch', 'update', 'watch'})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def stdin_closed() -> None:
        if not sys.stdin.buffer.read1(65536):
            loop.remove_reader(sys.stdin.fileno())
            stop.set()

    if exit_on_stdin_eof:
        loop.add_reader(sys.stdin.fileno(), stdin_closed)
    async with emulator, kmock.Server(emulator, host=host, port=port or None) as server:
        print(f'LISTENING http://{server.host}:{server.port}', flush=True)
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--host', default='127.0.0.1')
    parser.add_argument('--port', type=int, default=0)
    parser.add_argument('--exit-on-stdin-eof', action='store_true',
                        help='stop when standard input closes (test harnesses)')
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port, args.exit_on_stdin_eof))


if __name__ == '__main__':
    main()
