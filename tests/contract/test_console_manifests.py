"""Contract: deploy/components/console follows the manifest rules (CONVENTIONS.md "Manifests") and, with the
network policies, lets the console reach the gateway and the retriever and nothing else. It is off unless an
overlay enables it: the checks render the prod overlay with the component added, in a temporary overlay."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from services.console.config import ConsoleSettings
from tests.contract.test_manifests import (
    CALL_GRAPH,
    DEPLOY,
    K8S_VERSION,
    OUTSIDE,
    PORTS,
    SERVICES,
    UID,
    Manifests,
    _allowed,
    _read_kustomization_files,
    _selects,
    reachable,
    render,
    render_prod_with,
)

COMPONENT = DEPLOY / "components" / "console"
CONSOLE_PORT = 8080
EXPERIMENTS_DIR = "/etc/recsys/experiments"


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Manifests:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed: the component is checked from its files alone")
    return Manifests("prod+console", render_prod_with(COMPONENT, tmp_path_factory.mktemp("overlay")))


@pytest.fixture(scope="module")
def component() -> Manifests:
    return Manifests("console-files", _read_kustomization_files(COMPONENT))


def test_every_document_is_valid_kubernetes(component: Manifests) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed")
    for doc in component.docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_console_is_off_unless_an_overlay_enables_it() -> None:
    for overlay in ("dev", "prod"):
        names = {d["metadata"]["name"] for d in render(overlay) if d["kind"] == "Deployment"}
        assert "console" not in names and names == set(SERVICES), overlay


def test_container_follows_the_rules(component: Manifests) -> None:
    pod = component.pod_spec("console")
    container = component.container("console")
    assert pod["serviceAccountName"] == "console" and pod["automountServiceAccountToken"] is False
    assert component.get("ServiceAccount", "console")["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == UID
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"]
    assert security["capabilities"]["drop"] == ["ALL"] and security["runAsUser"] == UID
    assert {"cpu", "memory"} <= set(container["resources"]["requests"]) <= set(container["resources"]["limits"])
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/tmp", EXPERIMENTS_DIR}
    assert container["command"] == ["python", "-m", "services.console"] and container["image"] == "recsys"
    assert container["ports"] == [{"name": "http", "containerPort": CONSOLE_PORT, "protocol": "TCP"}]
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": CONSOLE_PORT}, probe


def test_settings_point_at_the_gateway_and_the_retriever(component: Manifests) -> None:
    env = {e["name"]: e for e in component.container("console")["env"]}
    fields = {f"CONSOLE_{name.upper()}" for name in ConsoleSettings.model_fields}
    assert set(env) <= fields, f"unknown settings: {set(env) - fields}"
    assert env["CONSOLE_PORT"]["value"] == str(CONSOLE_PORT) and env["CONSOLE_HOST"]["value"] == "0.0.0.0"
    assert env["CONSOLE_GATEWAY_ADDRESS"]["value"] == f"gateway:{PORTS['gateway']}"
    assert env["CONSOLE_RETRIEVER_ADDRESS"]["value"] == f"dns:///retriever:{PORTS['retriever']}"
    assert env["CONSOLE_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["optional"] is True
    service = component.get("Service", "console")["spec"]
    assert _selects(service["selector"], component.pod_labels("console"))
    assert service["ports"][0]["targetPort"] == "http" and service["ports"][0]["port"] == CONSOLE_PORT


def test_the_experiments_file_comes_from_an_optional_configmap(component: Manifests) -> None:
    """The gateway's experiments file, where one runs: the console starts (listing none) without the ConfigMap."""
    env = {e["name"]: e for e in component.container("console")["env"]}
    path = Path(env["CONSOLE_EXPERIMENTS_FILE"]["value"])
    mounts = {m["mountPath"]: m for m in component.container("console")["volumeMounts"]}
    mount = mounts[str(path.parent)]
    assert mount["readOnly"] is True
    volume = next(v for v in component.pod_spec("console")["volumes"] if v["name"] == mount["name"])
    config_map = volume["configMap"]
    assert config_map["name"] == "recsys-experiments" and config_map["optional"] is True
    assert config_map["items"] == [{"key": "experiments.json", "path": path.name}]


def test_the_console_reaches_only_the_gateway_and_the_retriever(rendered: Manifests) -> None:
    policies = rendered.of_kind("NetworkPolicy")
    console = rendered.pod_labels("console")
    expected = CALL_GRAPH | {(OUTSIDE, "console", CONSOLE_PORT)}
    expected |= {("console", "gateway", PORTS["gateway"]), ("console", "retriever", PORTS["retriever"])}
    allowed = reachable(rendered, {"console": console}, {"console": [CONSOLE_PORT]})
    assert allowed == expected, f"extra: {sorted(allowed - expected)}; missing: {sorted(expected - allowed)}"
    assert _allowed(policies, "Egress", console, OUTSIDE, None, 53, "UDP"), "DNS"
    assert not _allowed(policies, "Egress", console, OUTSIDE, None, 443), "no egress to the world"
