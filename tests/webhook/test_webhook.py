"""Tests for sidecar/inject.py: the JSONPatch builder on real Pod and Deployment specs (patched, then validated
against the Kubernetes 1.30 strict schemas), the AdmissionReview handler, and an HTTPS round trip."""

from __future__ import annotations

import asyncio
import base64
import copy
import datetime
import ipaddress
import json
import ssl
from pathlib import Path

import aiohttp
import jsonpatch
import kubernetes_validate
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from ports import free_port

from railcar import webhook as inject
from railcar.cli import main as cli_main
from railcar.core.config import ConfigError

K8S = "1.30.0"

TEMPLATE = yaml.safe_load("""
native: true
baseUrl: http://127.0.0.1:8787/v1
container:
  name: railcar
  image: ghcr.io/railcar/railcar:0.1.0
  args: [serve]
  ports: [{name: railcar, containerPort: 8787, protocol: TCP}]
  env:
    - {name: RAILCAR_UPSTREAM_BASE_URL, value: "https://api.openai.com/v1"}
    - {name: RAILCAR_UPSTREAM_API_KEY_FILE, value: /var/run/secrets/railcar/upstream/api-key}
    - {name: RAILCAR_GUARDRAILS_CONFIG_PATH, value: /etc/railcar/guardrails}
    - {name: RAILCAR_TELEMETRY_SPOOL_DIR, value: /var/lib/railcar/spool}
  readinessProbe:
    exec: {command: [python, -c, "import urllib.request as u; u.urlopen('http://127.0.0.1:8787/readyz')"]}
    periodSeconds: 10
  securityContext: {readOnlyRootFilesystem: true, runAsNonRoot: true, allowPrivilegeEscalation: false}
  volumeMounts:
    - {name: railcar-guardrails, mountPath: /etc/railcar/guardrails, readOnly: true}
    - {name: railcar-spool, mountPath: /var/lib/railcar/spool}
    - {name: railcar-upstream, mountPath: /var/run/secrets/railcar/upstream, readOnly: true}
volumes:
  - {name: railcar-guardrails, configMap: {name: railcar-guardrails}}
  - {name: railcar-spool, emptyDir: {sizeLimit: 256Mi}}
  - {name: railcar-upstream, secret: {secretName: openai-key}}
""")

SINGLE = yaml.safe_load("""
apiVersion: v1
kind: Pod
metadata:
  name: agent
  namespace: team-a
  labels: {app: agent, railcar.io/inject: "true"}
spec:
  containers:
    - name: agent
      image: python:3.11-slim
      command: [python, -m, agent]
""")

SEVERAL = yaml.safe_load("""
apiVersion: v1
kind: Pod
metadata:
  generateName: crew-
  labels: {railcar.io/inject: "true"}
  annotations: {team: research}
spec:
  containers:
    - name: planner
      image: example/planner:1
      env: [{name: LOG_LEVEL, value: debug}]
    - name: coder
      image: example/coder:1
      env:
        - {name: OPENAI_BASE_URL, value: https://api.openai.com/v1}
        - {name: OPENAI_API_KEY, valueFrom: {secretKeyRef: {name: dummy, key: k}}}
    - name: metrics
      image: example/exporter:1
      ports: [{containerPort: 9100}]
  volumes:
    - {name: scratch, emptyDir: {}}
""")

WITH_INIT = yaml.safe_load("""
apiVersion: v1
kind: Pod
metadata:
  name: agent-init
  labels: {railcar.io/inject: "true"}
spec:
  initContainers:
    - {name: fetch-tools, image: busybox:1.36, command: [sh, -c, "true"]}
    - {name: migrate, image: example/migrate:1}
  containers:
    - {name: agent, image: example/agent:1}
""")

DEPLOYMENT = yaml.safe_load("""
apiVersion: apps/v1
kind: Deployment
metadata: {name: agent, namespace: team-a}
spec:
  replicas: 2
  selector: {matchLabels: {app: agent}}
  template:
    metadata:
      labels: {app: agent, railcar.io/inject: "true"}
    spec:
      serviceAccountName: agent
      containers:
        - name: agent
          image: example/agent:1
          resources: {requests: {cpu: 100m, memory: 128Mi}}
""")


def apply(doc: dict, patch: list) -> dict:
    """Apply an RFC 6902 patch with the reference `jsonpatch` library (the API server's semantics)."""
    return jsonpatch.JsonPatch(patch).apply(copy.deepcopy(doc))


def sidecars(spec: dict) -> list[dict]:
    return [c for key in ("initContainers", "containers") for c in spec.get(key) or [] if c["name"] == "railcar"]


def review(obj: dict, uid: str = "0b6f0f3c-1d1a-4c47-9a4e-6a3c8f2b1e77", kind: str = "Pod") -> dict:
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": uid, "kind": {"group": "", "version": "v1", "kind": kind},
                        "resource": {"group": "", "version": "v1", "resource": "pods"},
                        "namespace": "team-a", "operation": "CREATE", "object": obj}}


@pytest.mark.parametrize("pod", [SINGLE, SEVERAL, WITH_INIT], ids=["single", "several", "existing-init"])
def test_patched_pod_is_valid_and_has_sidecar_once(pod):
    patch = inject.build_patch(pod, TEMPLATE)
    out = apply(pod, patch)
    assert kubernetes_validate.validate(out, K8S, strict=True)
    spec = out["spec"]
    assert len(sidecars(spec)) == 1
    assert spec["initContainers"][0]["name"] == "railcar"  # first, so it is up before other init containers
    assert spec["initContainers"][0]["restartPolicy"] == "Always"
    # the original init containers keep their order after it
    assert [c["name"] for c in spec["initContainers"][1:]] == [c["name"] for c in pod["spec"].get("initContainers", [])]
    for c in spec["containers"]:
        urls = [e for e in c["env"] if e["name"] == "OPENAI_BASE_URL"]
        assert urls == [{"name": "OPENAI_BASE_URL", "value": "http://127.0.0.1:8787/v1"}], c["name"]
    assert {v["name"] for v in spec["volumes"]} >= {"railcar-guardrails", "railcar-spool", "railcar-upstream"}
    assert out["metadata"]["annotations"][inject.STATUS_ANNOTATION] == "injected"
    # idempotent: the patched pod needs nothing more
    assert inject.build_patch(out, TEMPLATE) == []


def test_several_containers_keep_their_own_env_and_volumes():
    out = apply(SEVERAL, inject.build_patch(SEVERAL, TEMPLATE))
    planner, coder, _ = out["spec"]["containers"]
    assert planner["env"][0] == {"name": "LOG_LEVEL", "value": "debug"}
    # the agent's own endpoint is replaced in place (it would bypass the guard), its key reference kept
    assert [e["name"] for e in coder["env"]] == ["OPENAI_BASE_URL", "OPENAI_API_KEY"]
    assert coder["env"][1]["valueFrom"]["secretKeyRef"]["name"] == "dummy"
    assert out["spec"]["volumes"][0] == {"name": "scratch", "emptyDir": {}}
    assert out["metadata"]["annotations"]["team"] == "research"


def test_deployment_pod_template_patch():
    patch = inject.build_patch(DEPLOYMENT["spec"]["template"], TEMPLATE, root="/spec/template")
    assert all(op["path"].startswith("/spec/template/") for op in patch)
    out = apply(DEPLOYMENT, patch)
    assert kubernetes_validate.validate(out, K8S, strict=True)
    assert len(sidecars(out["spec"]["template"]["spec"])) == 1
    assert out["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"] == "100m"


def test_regular_container_form_when_not_native():
    tpl = dict(TEMPLATE, native=False)
    out = apply(SINGLE, inject.build_patch(SINGLE, tpl))
    assert kubernetes_validate.validate(out, K8S, strict=True)
    assert [c["name"] for c in out["spec"]["containers"]] == ["agent", "railcar"]
    assert "restartPolicy" not in out["spec"]["containers"][1]
    assert "initContainers" not in out["spec"]


def test_shared_volume_is_not_duplicated():
    pod = copy.deepcopy(SINGLE)
    pod["spec"]["volumes"] = [copy.deepcopy(TEMPLATE["volumes"][0])]
    out = apply(pod, inject.build_patch(pod, TEMPLATE))
    names = [v["name"] for v in out["spec"]["volumes"]]
    assert sorted(names) == sorted(set(names))
    assert kubernetes_validate.validate(out, K8S, strict=True)


def test_already_injected_pod_gets_no_patch():
    injected = apply(SINGLE, inject.build_patch(SINGLE, TEMPLATE))
    resp = inject.review_response(review(injected), inject.SidecarTemplate.from_dict(TEMPLATE))["response"]
    assert resp["allowed"] is True
    assert "patch" not in resp and "patchType" not in resp


@pytest.mark.parametrize("mutate, reason", [
    (lambda p: p["spec"].__setitem__("hostNetwork", True), "hostNetwork"),
    (lambda p: p["spec"]["containers"][0].__setitem__("ports", [{"containerPort": 8787}]), "port 8787"),
    (lambda p: p["spec"].__setitem__("volumes", [{"name": "railcar-spool", "hostPath": {"path": "/x"}}]),
     "railcar-spool"),
    (lambda p: p["spec"].__setitem__("containers", []), "spec.containers"),
])
def test_unpatchable_pod_fails_open_with_warning(mutate, reason):
    pod = copy.deepcopy(SINGLE)
    mutate(pod)
    with pytest.raises(inject.InjectError, match=reason):
        inject.build_patch(pod, TEMPLATE)
    out = inject.review_response(review(pod, uid="u-1"), inject.SidecarTemplate.from_dict(TEMPLATE))
    resp = out["response"]
    assert resp == {"uid": "u-1", "allowed": True, "warnings": resp["warnings"]}
    assert reason in resp["warnings"][0] and "team-a/agent" in resp["warnings"][0]


def test_unlabelled_pods_and_other_kinds_are_left_alone():
    tpl = inject.SidecarTemplate.from_dict(TEMPLATE)
    pod = copy.deepcopy(SINGLE)
    pod["metadata"]["labels"]["railcar.io/inject"] = "false"
    assert "patch" not in inject.review_response(review(pod), tpl)["response"]
    assert "patch" not in inject.review_response(review(DEPLOYMENT, kind="Deployment"), tpl)["response"]


def test_review_response_shape_and_patch_decoding():
    out = inject.review_response(review(SINGLE, uid="abc"), inject.SidecarTemplate.from_dict(TEMPLATE))
    assert out["apiVersion"] == "admission.k8s.io/v1" and out["kind"] == "AdmissionReview"
    resp = out["response"]
    assert resp["uid"] == "abc" and resp["allowed"] is True and resp["patchType"] == "JSONPatch"
    patch = json.loads(base64.b64decode(resp["patch"]))
    assert patch == inject.build_patch(SINGLE, TEMPLATE)


@pytest.mark.parametrize("body, field", [
    ([], "body"),
    ({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview", "request": {"uid": "x"}}, "apiVersion"),
    ({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {}}, "request.uid"),
])
def test_malformed_review_names_the_field(body, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        inject.review_response(body, inject.SidecarTemplate.from_dict(TEMPLATE))


@pytest.mark.parametrize("tpl, field", [
    ({"container": {"name": "railcar"}}, "container.image"),
    ({"container": {"name": "railcar", "image": "x"}, "volumes": [{}]}, r"volumes\[0\].name"),
    ({"container": {"name": "railcar", "image": "x"}, "baseUrl": "127.0.0.1:8787"}, "baseUrl"),
    ({"container": {"name": "railcar", "image": "x"}, "sidecar": {}}, "unknown key 'sidecar'"),
])
def test_template_errors_name_the_field(tpl, field):
    with pytest.raises(inject.InjectError, match=field):
        inject.SidecarTemplate.from_dict(tpl)


def test_cli_reports_bad_template_with_exit_2(tmp_path, capsys):
    bad = tmp_path / "sidecar.yaml"
    bad.write_text("container: {name: railcar}\n")
    assert cli_main(["inject", "--sidecar-template", str(bad)]) == 2
    assert "container.image" in capsys.readouterr().err
    assert cli_main(["inject", "--sidecar-template", str(tmp_path / "missing.json")]) == 2
    assert "--sidecar-template" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ HTTPS round trip


def _self_signed(tmp_path: Path) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "railcar-inject.railcar.svc")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("railcar-inject.railcar.svc"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    crt, pem = tmp_path / "tls.crt", tmp_path / "tls.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    return str(crt), str(pem)




async def test_https_admission_round_trip(tmp_path):
    cert, key = _self_signed(tmp_path)
    tpl_file = tmp_path / "sidecar.json"
    tpl_file.write_text(json.dumps(TEMPLATE))
    template = inject.load_template(tpl_file)
    port = free_port()
    stop = asyncio.Event()
    server = asyncio.create_task(inject.serve(template, inject.ssl_context(cert, key), "127.0.0.1", port, stop,
                                              cert, key))
    client_ctx = ssl.create_default_context(cafile=cert)  # verify the webhook like the API server does (caBundle)
    url = f"https://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(100):  # wait for the listener
                try:
                    async with http.get(url + "/healthz", ssl=client_ctx) as r:
                        assert r.status == 200
                        break
                except aiohttp.ClientConnectorError:
                    await asyncio.sleep(0.02)
            async with http.post(url + "/mutate", json=review(SEVERAL, uid="round-trip"), ssl=client_ctx) as r:
                assert r.status == 200
                body = await r.json()
            resp = body["response"]
            assert resp["uid"] == "round-trip" and resp["allowed"] and resp["patchType"] == "JSONPatch"
            out = apply(SEVERAL, json.loads(base64.b64decode(resp["patch"])))
            assert kubernetes_validate.validate(out, K8S, strict=True)
            assert len(sidecars(out["spec"])) == 1

            async with http.post(url + "/mutate", data=b"{not json", ssl=client_ctx,
                                 headers={"Content-Type": "application/json"}) as r:
                assert r.status == 400
                err = (await r.json())["error"]
                assert set(err) == {"message", "type", "param", "code"} and err["param"] == "body"
            async with http.post(url + "/mutate", json={"kind": "AdmissionReview"}, ssl=client_ctx) as r:
                assert r.status == 400
                assert (await r.json())["error"]["param"] == "apiVersion/kind"
    finally:
        stop.set()
        await asyncio.wait_for(server, 5)


def test_ssl_context_names_the_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="--tls-cert"):
        inject.ssl_context(str(tmp_path / "nope.crt"), str(tmp_path / "nope.key"))


def test_main_serves_until_sigterm(tmp_path):
    """`main()` in its own process (uvloop, signal handlers), bound to loopback through ``args.host``."""
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    cert, key = _self_signed(tmp_path)
    tpl_file = tmp_path / "sidecar.yaml"
    tpl_file.write_text(yaml.safe_dump(TEMPLATE))
    port = free_port()
    code = ("import argparse, sys; from railcar.settings import load_config; from railcar.webhook import main; "
            f"a = argparse.Namespace(host='127.0.0.1', port={port}, tls_cert={cert!r}, tls_key={key!r}, "
            f"sidecar_template={str(tpl_file)!r}); sys.exit(main(a, load_config(None, {{}})))")
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
    try:
        ctx = ssl.create_default_context(cafile=cert)
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"https://127.0.0.1:{port}/healthz", context=ctx, timeout=2) as r:
                    assert r.status == 200
                    break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else ""
                time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_non_numeric_container_port_fails_open_with_warning():
    # A malformed port is one more "cannot patch" case: admitted unchanged with a warning, never a 400.
    pod = copy.deepcopy(SINGLE)
    pod["spec"]["containers"][0]["ports"] = [{"containerPort": "http"}]
    out = inject.review_response(review(pod, uid="u-2"), inject.SidecarTemplate.from_dict(TEMPLATE))
    resp = out["response"]
    assert resp["allowed"] is True and "patch" not in resp
    assert "containerPort" in resp["warnings"][0] and "'http'" in resp["warnings"][0]
    bad = copy.deepcopy(TEMPLATE)
    bad["container"]["ports"] = [{"containerPort": "x"}]
    with pytest.raises(inject.InjectError, match="sidecar template: container: ports.containerPort"):
        inject.SidecarTemplate.from_dict(bad)


def test_every_listed_base_url_is_replaced():
    # With OPENAI_BASE_URL listed twice the kubelet keeps the last entry: replacing only the first would leave the
    # agent pointed past the guard.
    pod = copy.deepcopy(SINGLE)
    pod["spec"]["containers"][0]["env"] = [{"name": "OPENAI_BASE_URL", "value": "https://api.openai.com/v1"},
                                           {"name": "LOG_LEVEL", "value": "info"},
                                           {"name": "OPENAI_BASE_URL", "value": "https://elsewhere.example/v1"}]
    out = apply(pod, inject.build_patch(pod, TEMPLATE))
    env = out["spec"]["containers"][0]["env"]
    assert [e["value"] for e in env if e["name"] == "OPENAI_BASE_URL"] == ["http://127.0.0.1:8787/v1"] * 2
    assert env[1] == {"name": "LOG_LEVEL", "value": "info"}
