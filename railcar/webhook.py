"""``railcar inject``: the Kubernetes mutating admission webhook that adds the Railcar sidecar to agent pods.

The API server POSTs an ``AdmissionReview`` (``admission.k8s.io/v1``) for every Pod CREATE matched by the
``MutatingWebhookConfiguration`` (Helm chart ``helm/railcar``, ``injection.enabled``); the handler answers with the
same ``AdmissionReview`` carrying ``response.uid``, ``allowed`` and, when it mutates, a base64 RFC 6902 JSONPatch
(``patchType: JSONPatch``). Format source: Kubernetes "Dynamic Admission Control", *Webhook request and response*.

Rules:

* only pods labelled ``railcar.io/inject: "true"`` are mutated (the webhook's ``objectSelector`` already filters;
  the label is checked again so a misconfigured selector never injects by accident);
* idempotent: a pod that already has a container or init container with the sidecar's name gets no patch;
* fails open: a pod the handler cannot patch (host network, port clash, conflicting volume, malformed spec) is
  admitted unchanged with a ``warnings`` entry saying why, never rejected (the chart also sets
  ``failurePolicy: Ignore`` so an unreachable webhook does not block pod creation);
* the agent containers (``spec.containers``) get ``OPENAI_BASE_URL`` pointing at the sidecar.

The sidecar itself comes from a template file (``--sidecar-template``, JSON or YAML), rendered by the Helm chart
from the same named template ``railcar.sidecar`` agent charts include, so injected and hand-written pods match::

    {"native": true,                      # init container with restartPolicy: Always (Kubernetes 1.29+)
     "baseUrl": "http://127.0.0.1:8787/v1",
     "container": {"name": "railcar", "image": "...", ...},
     "volumes": [{"name": "railcar-spool", "emptyDir": {"sizeLimit": "256Mi"}}, ...]}

A bare container object (with ``name`` and ``image``) is accepted as ``{"container": <it>}``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import copy
import json
import logging
import os
import signal
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from railcar.core.config import ConfigError
from railcar.sidecar.errors import error_response
from railcar.sidecar.settings import SidecarSettings

log = logging.getLogger("railcar.inject")

INJECT_LABEL = "railcar.io/inject"
STATUS_ANNOTATION = "railcar.io/status"
BASE_URL_ENV = "OPENAI_BASE_URL"
ADMISSION_API = "admission.k8s.io/v1"
DEFAULT_BASE_URL = "http://127.0.0.1:8787/v1"
# Largest AdmissionReview accepted; the API server caps objects at ~1.5 MiB (etcd request limit).
MAX_REVIEW_BYTES = 3 * 1024 * 1024


class InjectError(ValueError):
    """A pod (or the sidecar template) cannot be patched; the message says which field and why."""


@dataclass(frozen=True)
class SidecarTemplate:
    """The validated sidecar template: the container to add, pod volumes it needs, and how agents reach it.

    ``container``: a Kubernetes ``Container`` object (dict); ``volumes``: ``Volume`` objects; ``native``: add it
    as an init container with ``restartPolicy: Always`` (native sidecar, Kubernetes 1.29+) instead of as a regular
    container; ``base_url``: the value given to ``OPENAI_BASE_URL`` on agent containers.
    """

    container: dict
    volumes: tuple[dict, ...] = ()
    native: bool = True
    base_url: str = DEFAULT_BASE_URL

    @property
    def name(self) -> str:
        return self.container["name"]

    @property
    def ports(self) -> set[int]:
        """The sidecar container's ``containerPort`` numbers."""
        return _container_ports(self.container, "sidecar template: container")

    @classmethod
    def from_dict(cls, data: Any) -> SidecarTemplate:
        """Validate a template mapping (shape in the module docstring).

        Raises :class:`InjectError` naming the bad field (``container.image``, ``volumes[1].name``, ...).
        """
        if not isinstance(data, dict):
            raise InjectError("sidecar template: expected an object")
        if "container" not in data and "image" in data:
            data = {"container": data}
        unknown = set(data) - {"container", "volumes", "native", "baseUrl"}
        if unknown:
            raise InjectError(f"sidecar template: unknown key {sorted(unknown)[0]!r} "
                              "(known: container, volumes, native, baseUrl)")
        container = data.get("container")
        if not isinstance(container, dict):
            raise InjectError("sidecar template: container: expected an object")
        for key in ("name", "image"):
            if not isinstance(container.get(key), str) or not container[key]:
                raise InjectError(f"sidecar template: container.{key}: required string")
        _container_ports(container, "sidecar template: container")
        volumes = data.get("volumes") or []
        if not isinstance(volumes, list):
            raise InjectError("sidecar template: volumes: expected a list")
        for i, vol in enumerate(volumes):
            if not isinstance(vol, dict) or not isinstance(vol.get("name"), str):
                raise InjectError(f"sidecar template: volumes[{i}].name: required string")
        native = data.get("native", True)
        if not isinstance(native, bool):
            raise InjectError("sidecar template: native: expected true or false")
        base_url = data.get("baseUrl") or DEFAULT_BASE_URL
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise InjectError("sidecar template: baseUrl: must start with http:// or https://")  # never the URL
        container = copy.deepcopy(container)
        if native:
            container["restartPolicy"] = "Always"
        else:
            container.pop("restartPolicy", None)
        return cls(container, tuple(copy.deepcopy(volumes)), native, base_url)


def load_template(path: str | os.PathLike[str]) -> SidecarTemplate:
    """Read a sidecar template file (JSON or YAML, by content). Raises :class:`ConfigError` naming the flag."""
    import yaml  # JSON is YAML 1.2-compatible for the objects the chart renders

    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"--sidecar-template: cannot read {str(path)!r}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"--sidecar-template: {path}: invalid YAML/JSON: {exc}") from None
    try:
        return SidecarTemplate.from_dict(data)
    except InjectError as exc:
        raise ConfigError(f"--sidecar-template: {path}: {exc}") from None


# ---------------------------------------------------------------------------------------------------- patching


def _ptr(*parts: str | int) -> str:
    """RFC 6901 JSON pointer: ``~`` -> ``~0``, ``/`` -> ``~1`` (annotation keys contain ``/``)."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def _container_ports(container: Any, where: str) -> set[int]:
    """The ``containerPort`` numbers of a Kubernetes ``Container`` dict; :class:`InjectError` naming ``where``
    when one is not an integer (so a malformed pod fails open with a warning instead of a 400)."""
    out: set[int] = set()
    for p in (container.get("ports") or []) if isinstance(container, dict) else ():
        if isinstance(p, dict) and "containerPort" in p:
            try:
                out.add(int(p["containerPort"]))
            except (TypeError, ValueError):
                raise InjectError(f"{where}: ports.containerPort: {p['containerPort']!r} is not a port number") from None
    return out


def is_injected(pod: dict, name: str = "railcar") -> bool:
    """The pod already runs a container or init container called ``name``."""
    spec = pod.get("spec") or {}
    return any(c.get("name") == name for key in ("containers", "initContainers") for c in spec.get(key) or [])


def wants_injection(pod: dict) -> bool:
    """The pod carries the label ``railcar.io/inject: "true"``."""
    return str(((pod.get("metadata") or {}).get("labels") or {}).get(INJECT_LABEL, "")).lower() == "true"


def _check_pod(spec: dict, tpl: SidecarTemplate) -> list[dict]:
    """The agent containers of a pod ``spec`` that can take the sidecar; :class:`InjectError` for malformed
    ``spec.containers``, ``hostNetwork`` or a port clash with the sidecar (see :func:`build_patch`)."""
    containers = spec.get("containers")
    if not isinstance(containers, list) or not containers or not all(isinstance(c, dict) for c in containers):
        raise InjectError("pod: spec.containers: expected a non-empty list of containers")
    if spec.get("hostNetwork"):
        raise InjectError("pod: spec.hostNetwork is true: the sidecar's loopback port would be shared with the node")
    init = spec.get("initContainers") or []
    for c in list(containers) + list(init):
        clash = _container_ports(c, f"pod: container {c.get('name')!r}") & tpl.ports
        if clash:
            raise InjectError(f"pod: container {c.get('name')!r} already uses port {min(clash)} of the sidecar")
    return containers


def _sidecar_op(spec: dict, tpl: SidecarTemplate, root: str) -> dict:
    """The sidecar itself: first init container when native (ready before other init containers that may call
    the model), last container otherwise."""
    if not tpl.native:
        return {"op": "add", "path": root + _ptr("spec", "containers", "-"), "value": tpl.container}
    if isinstance(spec.get("initContainers"), list) and spec["initContainers"]:
        return {"op": "add", "path": root + _ptr("spec", "initContainers", 0), "value": tpl.container}
    return {"op": "add", "path": root + _ptr("spec", "initContainers"), "value": [tpl.container]}


def _volume_ops(spec: dict, tpl: SidecarTemplate, root: str) -> list[dict]:
    """The template's volumes the pod lacks; :class:`InjectError` for a same-named volume defined otherwise."""
    existing = {v.get("name"): v for v in spec.get("volumes") or [] if isinstance(v, dict)}
    missing = []
    for vol in tpl.volumes:
        have = existing.get(vol["name"])
        if have is None:
            missing.append(vol)
        elif have != vol:
            raise InjectError(f"pod: spec.volumes: a different volume named {vol['name']!r} already exists")
    if not missing:
        return []
    if existing or "volumes" in spec:
        return [{"op": "add", "path": root + _ptr("spec", "volumes", "-"), "value": v} for v in missing]
    return [{"op": "add", "path": root + _ptr("spec", "volumes"), "value": list(missing)}]


def _base_url_ops(containers: list[dict], tpl: SidecarTemplate, root: str) -> list[dict]:
    """``OPENAI_BASE_URL`` pointing at the sidecar on every agent container (added, or replacing every other value:
    with the name listed twice the kubelet keeps the last one)."""
    entry = {"name": BASE_URL_ENV, "value": tpl.base_url}
    ops: list[dict] = []
    for i, c in enumerate(containers):
        env = c.get("env")
        if not env:
            ops.append({"op": "add", "path": root + _ptr("spec", "containers", i, "env"), "value": [entry]})
            continue
        found = [j for j, e in enumerate(env) if isinstance(e, dict) and e.get("name") == BASE_URL_ENV]
        if not found:
            ops.append({"op": "add", "path": root + _ptr("spec", "containers", i, "env", "-"), "value": entry})
        # The pod asked for the guard: an agent pointed elsewhere would bypass it.
        ops += [{"op": "replace", "path": root + _ptr("spec", "containers", i, "env", j), "value": entry}
                for j in found if env[j] != entry]
    return ops


def _status_op(pod: dict, root: str) -> dict:
    """The annotation ``railcar.io/status: injected``, creating ``metadata`` / ``annotations`` when absent."""
    meta = pod.get("metadata") if isinstance(pod.get("metadata"), dict) else None
    if meta is None:
        return {"op": "add", "path": root + _ptr("metadata"), "value": {"annotations": {STATUS_ANNOTATION: "injected"}}}
    if not isinstance(meta.get("annotations"), dict):
        return {"op": "add", "path": root + _ptr("metadata", "annotations"), "value": {STATUS_ANNOTATION: "injected"}}
    return {"op": "add", "path": root + _ptr("metadata", "annotations", STATUS_ANNOTATION), "value": "injected"}


def build_patch(pod: dict, template: dict | SidecarTemplate, *, root: str = "") -> list[dict]:
    """RFC 6902 JSONPatch operations that add the sidecar to ``pod``; ``[]`` when it is already there.

    ``pod``: a Pod object, or a pod template (``{"metadata", "spec"}`` as in a Deployment's ``spec.template``);
    ``template``: a :class:`SidecarTemplate` or its dict form; ``root``: JSON pointer prefix of the pod inside the
    patched document (``"/spec/template"`` to patch a Deployment). The operations, in order: the sidecar (first
    init container when native, last container otherwise; first so it is ready before other init containers
    that may call the model), missing pod volumes, ``OPENAI_BASE_URL`` on every agent container (replacing an
    existing value), and the annotation ``railcar.io/status: injected``. The label is not checked here.

    Raises :class:`InjectError` when the pod cannot take the sidecar: not an object, ``hostNetwork`` (the
    loopback port would be the node's), a container already using the sidecar's port, a volume of the same name
    with a different definition, or malformed ``spec.containers``.
    """
    tpl = template if isinstance(template, SidecarTemplate) else SidecarTemplate.from_dict(template)
    if not isinstance(pod, dict) or not isinstance(pod.get("spec"), dict):
        raise InjectError("pod: spec: expected an object")
    if is_injected(pod, tpl.name):
        return []
    spec = pod["spec"]
    containers = _check_pod(spec, tpl)
    return [_sidecar_op(spec, tpl, root), *_volume_ops(spec, tpl, root), *_base_url_ops(containers, tpl, root),
            _status_op(pod, root)]


# ---------------------------------------------------------------------------------------------------- admission


def _describe(pod: dict, request: dict) -> str:
    meta = pod.get("metadata") or {}
    name = meta.get("name") or meta.get("generateName") or "<unnamed>"
    return f"{request.get('namespace') or meta.get('namespace') or 'default'}/{name}"


def review_response(review: Any, template: SidecarTemplate) -> dict:
    """Answer one ``AdmissionReview`` request object (already parsed JSON) with an ``AdmissionReview`` response.

    Always ``allowed: true``: the webhook mutates or stays out of the way, it never rejects. Raises
    :class:`ValueError` naming the field when ``review`` is not an ``admission.k8s.io/v1`` AdmissionReview with a
    ``request.uid`` (the HTTP layer turns that into a 400).
    """
    if not isinstance(review, dict):
        raise ValueError("body: expected an AdmissionReview object")
    if review.get("kind") != "AdmissionReview" or review.get("apiVersion") != ADMISSION_API:
        raise ValueError(f"apiVersion/kind: expected {ADMISSION_API} AdmissionReview, got "
                         f"{review.get('apiVersion')!r} {review.get('kind')!r}")
    request = review.get("request")
    if not isinstance(request, dict) or not isinstance(request.get("uid"), str) or not request["uid"]:
        raise ValueError("request.uid: required string")
    response: dict[str, Any] = {"uid": request["uid"], "allowed": True}
    out = {"apiVersion": ADMISSION_API, "kind": "AdmissionReview", "response": response}
    pod = request.get("object")
    kind = (request.get("kind") or {}).get("kind")
    if kind != "Pod" or request.get("operation", "CREATE") != "CREATE" or not isinstance(pod, dict):
        return out
    if not wants_injection(pod):
        return out
    try:
        patch = build_patch(pod, template)
    except InjectError as exc:
        # Fail open: the pod runs without the guard, and whoever created it sees why.
        msg = f"railcar: sidecar not injected into {_describe(pod, request)}: {exc}"
        log.warning(msg)
        response["warnings"] = [msg]
        return out
    if patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(json.dumps(patch, separators=(",", ":")).encode()).decode()
        log.info("injected sidecar into %s", _describe(pod, request))
    return out


def build_app(template: SidecarTemplate) -> web.Application:
    """The webhook's aiohttp application: ``POST /mutate`` (AdmissionReview JSON), ``GET /healthz``.

    A body that is not JSON or not an AdmissionReview gets HTTP 400 in the OpenAI error shape, naming the field;
    a body over ``MAX_REVIEW_BYTES`` gets 413.
    """

    async def mutate(request: web.Request) -> web.Response:
        if request.content_type != "application/json":
            return error_response(415, "Content-Type must be application/json", param="Content-Type",
                                  code="unsupported_media_type")
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return error_response(413, f"body larger than {MAX_REVIEW_BYTES} bytes", code="request_too_large")
        try:
            review = json.loads(raw)
        except ValueError as exc:
            return error_response(400, f"body: invalid JSON: {exc}", param="body", code="invalid_json")
        try:
            return web.json_response(review_response(review, template))
        except ValueError as exc:
            param = str(exc).split(":", 1)[0]
            return error_response(400, str(exc), param=param, code="invalid_admission_review")

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    app = web.Application(client_max_size=MAX_REVIEW_BYTES)
    app.router.add_post("/mutate", mutate)
    app.router.add_get("/healthz", healthz)
    return app


def ssl_context(cert: str, key: str) -> ssl.SSLContext:
    """Server TLS context from PEM files (a ``kubernetes.io/tls`` Secret). Raises :class:`ConfigError` naming the flag."""
    for flag, path in (("--tls-cert", cert), ("--tls-key", key)):
        if not Path(path).is_file():
            raise ConfigError(f"{flag}: {path!r} is not a readable file")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"--tls-cert/--tls-key: cannot load the certificate pair: {exc}") from None
    return ctx


async def _reload_certs(ctx: ssl.SSLContext, cert: str, key: str, every_s: float = 60.0) -> None:
    """Reload the pair when the mounted Secret changes (cert-manager rotation): new handshakes use the new one."""
    def stamp() -> tuple[float, float]:
        return (os.stat(cert).st_mtime, os.stat(key).st_mtime)

    last = stamp()
    while True:
        await asyncio.sleep(every_s)
        try:
            now = stamp()
            if now != last:
                ctx.load_cert_chain(cert, key)
                last = now
                log.info("reloaded TLS certificate %s", cert)
        except (OSError, ssl.SSLError) as exc:  # mid-rotation: keep the old pair, try again later
            log.warning("TLS reload failed, keeping the current certificate: %s", exc)


async def serve(template: SidecarTemplate, ctx: ssl.SSLContext, host: str, port: int,
                stop: asyncio.Event, cert: str = "", key: str = "") -> None:
    """Serve the webhook over HTTPS on ``host:port`` until ``stop`` is set."""
    runner = web.AppRunner(build_app(template), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ctx)
    await site.start()
    reload = asyncio.create_task(_reload_certs(ctx, cert, key)) if cert and key else None
    log.info("railcar inject: listening on https://%s:%d/mutate (sidecar %r, native=%s)",
             host, port, template.name, template.native)
    try:
        await stop.wait()
    finally:
        if reload:
            reload.cancel()
        await runner.cleanup()


def main(args: argparse.Namespace, config: SidecarSettings) -> int:
    """``railcar inject``: serve the admission webhook until SIGTERM/SIGINT; returns the exit code.

    Uses ``args.port``, ``args.tls_cert``, ``args.tls_key``, ``args.sidecar_template`` (see :mod:`railcar.cli`)
    and ``args.host`` when the CLI declares it (default ``0.0.0.0``: the API server reaches the webhook through
    its Service). ``config.server.log_level`` sets the log level. Raises :class:`ConfigError` (exit 2) naming the flag.
    """
    logging.basicConfig(level=config.server.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if not args.sidecar_template:
        raise ConfigError("--sidecar-template: required (the chart mounts it from its ConfigMap)")
    template = load_template(args.sidecar_template)
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port: {args.port} is not a TCP port (1-65535)")
    ctx = ssl_context(args.tls_cert, args.tls_key)
    host = getattr(args, "host", None) or "0.0.0.0"

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(template, ctx, host, args.port, stop, args.tls_cert, args.tls_key)

    try:
        import uvloop

        uvloop.run(run())
    except ImportError:  # pragma: no cover - uvloop is a dependency; keep working without it
        asyncio.run(run())
    return 0
