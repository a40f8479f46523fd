"""Tests for the deployment files: the Helm chart `helm/railcar` rendered (Helm v4 as a library, helm-python-sdk)
with default values and with injection, native sidecars and the HPA, linted strictly, every manifest validated
against the Kubernetes 1.30 strict schemas (kubernetes-validate); the `railcar.sidecar` named template included by
an agent chart; the webhook's rendered sidecar template driving `railcar.webhook`; and `hadolint Dockerfile`."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import helm_python as helm
import jsonpatch
import kubernetes_validate
import pytest
import yaml

from railcar import webhook as inject

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "railcar"
K8S = "1.30.0"
# Custom resources without a schema in kubernetes-validate: checked by hand below.
CRD_GROUPS = ("kafka.strimzi.io/", "cert-manager.io/")

FULL = {
    "injection": {"enabled": True, "namespaces": ["team-a", "team-b"],
                  "tls": {"secretName": "railcar-inject-tls", "caBundle": "TFMwdExTMUNSVWRKVGc9PQ=="}},
    "sidecar": {"native": True, "upstream": {"apiKeySecret": {"name": "openai-key", "key": "api-key"}},
                "guardrails": {"files": {"config.yml": "rails:\n  output:\n    streaming:\n      enabled: true\n",
                                         "rails.co": "define flow check\n  pass\n"}}},
    "consumer": {"autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 6},
                 "fileset": {"existingClaim": "railcar-fileset"},
                 "config": {"detection": {"kinds": ["secret"]}}},
    "kafka": {"securityProtocol": "SASL_SSL",
              "sasl": {"mechanism": "SCRAM-SHA-512", "username": "railcar",
                       "passwordSecret": {"name": "railcar-kafka-user", "key": "password"}},
              "tls": {"caSecret": {"name": "railcar-cluster-ca-cert", "key": "ca.crt"}}},
    "strimzi": {"enabled": True, "cluster": "prod"},
    "networkPolicy": {"metricsFrom": [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}]},
}


def render(values: dict | None = None, chart: Path = CHART) -> list[dict]:
    """Render offline and return every manifest (documents of all templates, NOTES excluded)."""
    with helm.Chart.load(chart) as c:
        out = c.render(values=values or {}, name="rc", namespace="railcar")
    docs = []
    for path, text in sorted(out.items()):
        if path.endswith("NOTES.txt"):
            continue
        docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def validate_all(docs: list[dict]) -> None:
    for doc in docs:
        if doc["apiVersion"].startswith(CRD_GROUPS):
            continue
        try:
            kubernetes_validate.validate(doc, K8S, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {'.'.join(map(str, exc.path))}: {exc.message}")


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def lint(values: dict) -> list[dict]:
    report = helm.lint(CHART, values, strict=True, kube_version="v1.30.0")
    assert report["errors"] == [], report
    return [m for m in report["messages"] if m["severity"] >= 2]  # warnings fail under --strict too


def test_default_values_render_valid_manifests():
    docs = render()
    validate_all(docs)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(["ConfigMap", "Deployment", "NetworkPolicy", "PodDisruptionBudget",
                            "Service", "ServiceAccount"])
    deploy = by_kind(docs, "Deployment")[0]
    pod = deploy["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["args"][0] == "consume"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz" and c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["securityContext"]["readOnlyRootFilesystem"] is True and pod["securityContext"]["runAsNonRoot"] is True
    assert deploy["spec"]["replicas"] == 2
    toml = next(d for d in by_kind(docs, "ConfigMap") if "railcar.toml" in d["data"])["data"]["railcar.toml"]
    assert 'group_id = "railcar-security"' in toml
    assert lint({}) == []


def test_full_values_render_valid_manifests():
    docs = render(FULL)
    validate_all(docs)
    assert lint(FULL) == []
    (hpa,) = by_kind(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "rc-railcar-consumer" and hpa["spec"]["maxReplicas"] == 6
    consumer = next(d for d in by_kind(docs, "Deployment") if d["metadata"]["name"] == "rc-railcar-consumer")
    assert "replicas" not in consumer["spec"]  # the HPA owns it
    env = {e["name"]: e for e in consumer["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["RAILCAR_KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "railcar-kafka-user",
                                                                               "key": "password"}
    assert all("value" not in e or "password" not in e["value"].lower() for e in env.values())

    (mwc,) = by_kind(docs, "MutatingWebhookConfiguration")
    hook = mwc["webhooks"][0]
    assert hook["failurePolicy"] == "Ignore" and hook["sideEffects"] == "None"
    assert hook["objectSelector"] == {"matchLabels": {"railcar.io/inject": "true"}}
    assert hook["clientConfig"]["service"]["path"] == "/mutate"
    assert hook["namespaceSelector"]["matchExpressions"][0]["values"] == ["railcar", "team-a", "team-b"]
    webhook = next(d for d in by_kind(docs, "Deployment") if d["metadata"]["name"] == "rc-railcar-inject")
    tls = next(v for v in webhook["spec"]["template"]["spec"]["volumes"] if v["name"] == "tls")
    assert tls["secret"]["secretName"] == "railcar-inject-tls"
    # the guardrails ConfigMap exists in every namespace the sidecar may be injected into
    guard_ns = sorted(d["metadata"]["namespace"] for d in by_kind(docs, "ConfigMap")
                      if d["metadata"]["name"] == "rc-railcar-guardrails")
    assert guard_ns == ["railcar", "team-a", "team-b"]

    topics = by_kind(docs, "KafkaTopic")
    assert sorted(t["spec"]["topicName"] for t in topics) == ["otlp_spans", "railcar.dlq", "railcar.findings"]
    for t in topics:
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", t["metadata"]["name"])
        assert t["metadata"]["labels"]["strimzi.io/cluster"] == "prod"
        assert t["spec"]["partitions"] >= 1 and t["spec"]["replicas"] >= 1


def test_schema_rejects_bad_values_naming_the_key():
    with helm.Chart.load(CHART) as c:
        for values, key in (({"sidecar": {"port": 70000}}, "/sidecar/port"),
                            ({"kafka": {"securityProtocol": "TLS"}}, "/kafka/securityProtocol"),
                            ({"sidecar": {"spool": {"sizeLimit": "lots"}}}, "/sidecar/spool/sizeLimit"),
                            ({"consumr": {}}, "consumr")):
            with pytest.raises(helm.HelmError, match=re.escape(key)):
                c.validate_schema(values)


def test_bundled_guardrails_without_configmap():
    """No guardrail files: the sidecar uses the image's bundled config and mounts no ConfigMap."""
    docs = render({"injection": {"enabled": True, "tls": {"secretName": "t", "caBundle": "eA=="}}})
    validate_all(docs)
    cm = next(d for d in by_kind(docs, "ConfigMap") if "sidecar.json" in d.get("data", {}))
    tpl = json.loads(cm["data"]["sidecar.json"])
    env = {e["name"]: e.get("value") for e in tpl["container"]["env"]}
    assert env["RAILCAR_GUARDRAILS_CONFIG_PATH"] == "default"
    assert "railcar-guardrails" not in {v["name"] for v in tpl["volumes"]}
    assert "railcar-guardrails" not in {m["name"] for m in tpl["container"]["volumeMounts"]}
    assert not any(d["metadata"]["name"].endswith("-guardrails") for d in by_kind(docs, "ConfigMap"))


def test_cert_manager_variant():
    values = {"injection": {"enabled": True,
                            "tls": {"certManager": {"enabled": True, "issuerRef": {"name": "selfsigned"}}}}}
    docs = render(values)
    validate_all(docs)
    assert lint(values) == []
    (mwc,) = by_kind(docs, "MutatingWebhookConfiguration")
    assert mwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == "railcar/rc-railcar-inject"
    assert "caBundle" not in mwc["webhooks"][0]["clientConfig"]
    (cert,) = by_kind(docs, "Certificate")
    assert "rc-railcar-inject.railcar.svc" in cert["spec"]["dnsNames"]
    assert cert["spec"]["secretName"] == "rc-railcar-inject-tls"


def test_injection_requires_tls():
    with helm.Chart.load(CHART) as c, pytest.raises(helm.HelmError, match="injection.tls.secretName"):
        c.render(values={"injection": {"enabled": True}}, name="rc", namespace="railcar")


def _agent_chart(tmp_path: Path) -> Path:
    """A minimal agent chart that depends on railcar and includes its public named templates."""
    agent = tmp_path / "agent"
    (agent / "templates").mkdir(parents=True)
    shutil.copytree(CHART, agent / "charts" / "railcar")
    (agent / "Chart.yaml").write_text("apiVersion: v2\nname: agent\nversion: 1.0.0\n"
                                      "dependencies:\n  - name: railcar\n    version: 0.1.0\n")
    (agent / "values.yaml").write_text("railcar:\n  consumer:\n    enabled: false\n")
    (agent / "templates" / "deployment.yaml").write_text("""\
{{- $rc := dict "Values" .Values.railcar "Release" .Release }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: agent
spec:
  selector:
    matchLabels: {app: agent}
  template:
    metadata:
      labels: {app: agent}
    spec:
      {{- if .Values.railcar.sidecar.native }}
      initContainers:
        {{- include "railcar.sidecar" $rc | nindent 8 }}
      {{- end }}
      containers:
        - name: agent
          image: example/agent:1
          env:
            {{- include "railcar.agentEnv" $rc | nindent 12 }}
        {{- if not .Values.railcar.sidecar.native }}
        {{- include "railcar.sidecar" $rc | nindent 8 }}
        {{- end }}
      volumes:
        {{- include "railcar.sidecarVolumes" $rc | nindent 8 }}
""")
    return agent


@pytest.mark.parametrize("native", [True, False])
def test_agent_chart_includes_the_sidecar(tmp_path, native):
    agent = _agent_chart(tmp_path)
    docs = render({"railcar": {"sidecar": {"native": native, "guardrails": {"files": {"config.yml": "rails: {}\n"}},
                                           "upstream": {"apiKeySecret": {"name": "openai-key"}}}}}, agent)
    validate_all(docs)
    deploy = next(d for d in docs if d["metadata"]["name"] == "agent")
    spec = deploy["spec"]["template"]["spec"]
    where = spec["initContainers"] if native else spec["containers"]
    (sc,) = [c for c in where if c["name"] == "railcar"]
    assert [c["name"] for key in ("initContainers", "containers") for c in spec.get(key, [])].count("railcar") == 1
    assert (sc.get("restartPolicy") == "Always") is native
    assert sc["readinessProbe"]["exec"]["command"][-1].count("/readyz") == 1
    env = {e["name"]: e.get("value") for e in sc["env"]}
    assert env["RAILCAR_SERVER_HOST"] == "127.0.0.1"  # only the agent in the pod can call it
    assert env["RAILCAR_UPSTREAM_API_KEY_FILE"] == "/var/run/secrets/railcar/upstream/api-key"
    assert int(env["RAILCAR_TELEMETRY_SPOOL_MAX_BYTES"]) == 256 * 1024 * 1024 * 9 // 10
    assert env["RAILCAR_GUARDRAILS_CONFIG_PATH"] == "/etc/railcar/guardrails"
    vols = {v["name"]: v for v in spec["volumes"]}
    assert vols["railcar-spool"]["emptyDir"]["sizeLimit"] == "256Mi"
    assert vols["railcar-guardrails"]["configMap"]["name"] == "rc-railcar-guardrails"
    mounts = {m["name"] for m in sc["volumeMounts"]}
    assert mounts <= set(vols) and "railcar-guardrails" in mounts
    assert vols["railcar-upstream"]["secret"]["secretName"] == "openai-key"
    agent_c = next(c for c in spec["containers"] if c["name"] == "agent")
    assert agent_c["env"] == [{"name": "OPENAI_BASE_URL", "value": "http://127.0.0.1:8787/v1"}]
    # the guardrails ConfigMap the volume names is rendered by the subchart
    assert any(d["kind"] == "ConfigMap" and d["metadata"]["name"] == "rc-railcar-guardrails" for d in docs)


def test_webhook_injects_the_same_sidecar_as_the_named_template(tmp_path):
    docs = render(FULL)
    cm = next(d for d in by_kind(docs, "ConfigMap") if "sidecar.json" in d.get("data", {}))
    template = inject.SidecarTemplate.from_dict(json.loads(cm["data"]["sidecar.json"]))
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "agent", "labels": {"railcar.io/inject": "true"}},
           "spec": {"containers": [{"name": "agent", "image": "example/agent:1"}]}}
    out = jsonpatch.apply_patch(copy.deepcopy(pod), inject.build_patch(pod, template))
    kubernetes_validate.validate(out, K8S, strict=True)
    injected = out["spec"]["initContainers"][0]

    agent = _agent_chart(tmp_path)
    sub = copy.deepcopy(FULL)
    sub["consumer"]["enabled"] = False
    agent_docs = render({"railcar": sub}, agent)
    included = next(d for d in agent_docs if d["metadata"]["name"] == "agent")["spec"]["template"]["spec"]
    assert injected == included["initContainers"][0]
    assert out["spec"]["volumes"] == included["volumes"]


def test_hadolint_passes_and_install_step_matches_ci():
    exe = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    proc = subprocess.run([exe, "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^RUN pip install \.(\s|$)", text, re.M), "the image installs with CI's `pip install .`"
    assert re.search(r"^USER 10001", text, re.M) and "HEALTHCHECK" in text and "/healthz" in text
