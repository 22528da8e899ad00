"""Contract: the Kubernetes manifests under deploy/ follow CONVENTIONS.md ("Manifests").

Every overlay (and the base) is rendered with `kubectl kustomize`; the base is also read straight from its YAML
files ("base-files"), so the conventions are still checked where kubectl is missing. Each rendered document is
validated against the Kubernetes OpenAPI schemas of a fixed version (kubernetes-validate, strict: unknown fields
fail), then the suite's own rules are checked: probes, ports, resources, security context, Services, HPAs, PDBs,
ServiceAccounts, the gateway's backend addresses, Qdrant's StatefulSet, the GPU component and the network policies.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.common.metrics import rpc_metrics
from services.common.server import server_options
from services.common.settings import ServiceSettings
from services.embedding.config import EmbeddingSettings
from services.gateway.config import GatewaySettings
from services.preprocessor.config import PreprocessorSettings
from services.ranker.config import RankerSettings
from services.retriever.config import RetrieverSettings

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY = REPO_ROOT / "deploy"
K8S_VERSION = "1.32"  # the schemas kubernetes-validate checks against (kubectl here is 1.32 too)

# Service -> its settings class; the gRPC ports are their defaults, the metrics ports those + 1000.
SETTINGS: dict[str, type[ServiceSettings]] = {
    "gateway": GatewaySettings,
    "preprocessor": PreprocessorSettings,
    "embedding": EmbeddingSettings,
    "retriever": RetrieverSettings,
    "ranker": RankerSettings,
}
PORTS = {svc: int(settings.model_fields["port"].default) for svc, settings in SETTINGS.items()}
METRICS_PORTS = {svc: port + 1000 for svc, port in PORTS.items()}
# Service -> the name its gRPC health service reports once warm (startup and readiness probes ask for it).
HEALTH_NAMES = {
    "gateway": "recsys.gateway.v1.GatewayService",
    "preprocessor": "recsys.preprocessor.v1.PreprocessorService",
    "embedding": "recsys.embedding.v1.EmbeddingService",
    "retriever": "recsys.retriever.v1.RetrieverService",
    "ranker": "recsys.ranker.v1.RankerService",
}
SERVICES = tuple(PORTS)
BACKENDS = ("preprocessor", "embedding", "retriever", "ranker")
QDRANT_PORTS = {"http": 6333, "grpc": 6334, "p2p": 6335}
QDRANT_REPLICAS = {"base-files": 3, "base": 3, "dev": 1, "prod": 3}
APP_LABEL = "app.kubernetes.io/name"
UID = 10001
APP_SHUTDOWN_S = 10 + 1  # the services' default grace period + drain on SIGTERM

SOURCES = ("base-files", "base", "dev", "prod")
# Kinds of CRDs (the Prometheus Operator's) that the validator has no schema for; checked by their own tests.
CUSTOM_RESOURCES = {"ServiceMonitor"}
KUSTOMIZE_DIRS = {"base": DEPLOY / "base", "dev": DEPLOY / "overlays" / "dev", "prod": DEPLOY / "overlays" / "prod"}

Doc = dict[str, Any]


# --- rendering ---------------------------------------------------------------------------------------------------


def _load_yaml_docs(text: str) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def _read_kustomization_files(folder: Path) -> list[Doc]:
    """Fallback renderer: the resources a kustomization lists, read as plain YAML (no transformers applied)."""
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text(encoding="utf-8"))
    docs: list[Doc] = []
    for resource in kustomization.get("resources", []):
        path = folder / resource
        if path.is_dir():
            docs += _read_kustomization_files(path)
        else:
            docs += _load_yaml_docs(path.read_text(encoding="utf-8"))
    return docs


@cache
def _kustomize(folder: Path) -> tuple[Doc, ...]:
    kubectl = shutil.which("kubectl")
    assert kubectl is not None
    proc = subprocess.run([kubectl, "kustomize", str(folder)], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, f"kubectl kustomize {folder} failed:\n{proc.stderr}"
    return tuple(_load_yaml_docs(proc.stdout))


def render_prod_with(component: Path, workdir: Path) -> list[Doc]:
    """kubectl kustomize of an overlay that is prod plus ``component``, as an operator would add it (opt-in
    components are in no overlay of ours, so their checks render one in ``workdir``)."""
    overlay = workdir / f"prod-with-{component.name}"
    overlay.mkdir(exist_ok=True)
    (overlay / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: recsys\n"
        f"resources:\n  - {os.path.relpath(DEPLOY / 'overlays' / 'prod', overlay)}\n"
        f"components:\n  - {os.path.relpath(component, overlay)}\n"
    )
    result = subprocess.run(
        ["kubectl", "kustomize", str(overlay)], capture_output=True, text=True, check=True, timeout=120
    )
    return _load_yaml_docs(result.stdout)


def render(source: str) -> list[Doc]:
    if source == "base-files":
        return _read_kustomization_files(DEPLOY / "base")
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not on PATH: cannot render the kustomize overlays (base-files still checked)")
    return list(_kustomize(KUSTOMIZE_DIRS[source]))


class Manifests:
    """The rendered documents of one source, with look-ups."""

    def __init__(self, source: str, docs: list[Doc]) -> None:
        self.source = source
        self.docs = docs

    def of_kind(self, kind: str) -> list[Doc]:
        return [d for d in self.docs if d["kind"] == kind]

    def get(self, kind: str, name: str) -> Doc:
        found = [d for d in self.of_kind(kind) if d["metadata"]["name"] == name]
        assert len(found) == 1, f"{self.source}: expected one {kind} {name!r}, found {len(found)}"
        return found[0]

    def pod_spec(self, name: str, kind: str = "Deployment") -> Doc:
        spec: Doc = self.get(kind, name)["spec"]["template"]["spec"]
        return spec

    def container(self, name: str, kind: str = "Deployment") -> Doc:
        containers = self.pod_spec(name, kind)["containers"]
        assert len(containers) == 1, f"{name}: one container expected"
        container: Doc = containers[0]
        return container

    def pod_labels(self, name: str, kind: str = "Deployment") -> dict[str, str]:
        labels: dict[str, str] = self.get(kind, name)["spec"]["template"]["metadata"]["labels"]
        return labels

    def env(self, name: str, kind: str = "Deployment") -> dict[str, str]:
        """The container's environment as the pod sees it: envFrom ConfigMaps, then `env` values on top."""
        container = self.container(name, kind)
        env: dict[str, str] = {}
        for source in container.get("envFrom", []):
            ref = source.get("configMapRef")
            if ref is not None:
                env.update(self.get("ConfigMap", ref["name"]).get("data", {}))
        for var in container.get("env", []):
            if "value" in var:
                env[var["name"]] = var["value"]
        return env

    def grpc_port(self, name: str) -> int:
        ports = [p for p in self.container(name).get("ports", []) if p.get("name") == "grpc"]
        assert len(ports) == 1, f"{name}: one container port named grpc expected"
        port: int = ports[0]["containerPort"]
        return port


@pytest.fixture(scope="module", params=SOURCES)
def manifests(request: pytest.FixtureRequest) -> Manifests:
    return Manifests(request.param, render(request.param))


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _probe_service(probe: Doc) -> str:
    service: str = probe["grpc"].get("service", "")
    return service


# --- schema ------------------------------------------------------------------------------------------------------


def test_every_document_is_valid_kubernetes(manifests: Manifests) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed")
    errors = []
    for doc in manifests.docs:
        if doc["kind"] in CUSTOM_RESOURCES:
            continue
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = "/".join(str(p) for p in exc.path)
            errors.append(f"{doc['kind']} {doc['metadata'].get('name')}: {path}: {exc.message}")
    assert not errors, "\n".join(errors)


def test_workloads_present(manifests: Manifests) -> None:
    assert {d["metadata"]["name"] for d in manifests.of_kind("Deployment")} == set(SERVICES)
    assert [d["metadata"]["name"] for d in manifests.of_kind("StatefulSet")] == ["qdrant"]


# --- per service -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("svc", SERVICES)
def test_grpc_port_and_probes(manifests: Manifests, svc: str) -> None:
    container = manifests.container(svc)
    port = manifests.grpc_port(svc)
    assert port == PORTS[svc]
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = container.get(kind)
        assert probe is not None and "grpc" in probe, f"{svc}: native gRPC {kind} expected"
        assert probe["grpc"]["port"] == port, f"{svc}: {kind} must probe the grpc port (a number)"
    assert _probe_service(container["startupProbe"]) == HEALTH_NAMES[svc]
    assert _probe_service(container["readinessProbe"]) == HEALTH_NAMES[svc]
    assert _probe_service(container["livenessProbe"]) == "", f"{svc}: liveness asks for the overall status"


@pytest.mark.parametrize("svc", SERVICES)
def test_resources(manifests: Manifests, svc: str) -> None:
    resources = manifests.container(svc).get("resources", {})
    for bound in ("requests", "limits"):
        for resource in ("cpu", "memory"):
            assert resource in resources.get(bound, {}), f"{svc}: resources.{bound}.{resource} missing"


@pytest.mark.parametrize("svc", SERVICES)
def test_security_context(manifests: Manifests, svc: str) -> None:
    pod = manifests.pod_spec(svc).get("securityContext", {})
    ctx = {**pod, **manifests.container(svc).get("securityContext", {})}  # container settings win
    assert ctx.get("runAsNonRoot") is True
    assert ctx.get("runAsUser") == UID
    assert ctx.get("readOnlyRootFilesystem") is True
    assert ctx.get("allowPrivilegeEscalation") is False
    assert ctx.get("privileged", False) is False
    assert ctx.get("capabilities", {}).get("drop") == ["ALL"]
    assert ctx.get("seccompProfile", {}).get("type") == "RuntimeDefault"


@pytest.mark.parametrize("svc", SERVICES)
def test_writable_tmp_and_caches(manifests: Manifests, svc: str) -> None:
    pod = manifests.pod_spec(svc)
    empty_dirs = {v["name"] for v in pod.get("volumes", []) if "emptyDir" in v}
    mounts = {m["mountPath"]: m["name"] for m in manifests.container(svc).get("volumeMounts", [])}
    assert mounts.get("/tmp") in empty_dirs, f"{svc}: /tmp must be an emptyDir"
    env = manifests.env(svc)
    for var in ("HF_HOME", "XDG_CACHE_HOME"):
        path = env.get(var, "")
        assert any(path == m or path.startswith(m.rstrip("/") + "/") for m, v in mounts.items() if v in empty_dirs), (
            f"{svc}: {var}={path!r} must lie on an emptyDir"
        )


@pytest.mark.parametrize("svc", SERVICES)
def test_environment(manifests: Manifests, svc: str) -> None:
    env = manifests.env(svc)
    prefix = svc.upper() + "_"
    assert env.get(prefix + "HOST") == "0.0.0.0"
    assert env.get(prefix + "PORT") == str(PORTS[svc])
    assert env.get("HF_HUB_OFFLINE") == "1"
    assert env.get("TRANSFORMERS_OFFLINE") == "1"


@pytest.mark.parametrize("svc", SERVICES)
def test_image_and_command(manifests: Manifests, svc: str) -> None:
    container = manifests.container(svc)
    assert container["command"][-2:] == ["-m", f"services.{svc}"]
    # One image for the five services; only the GPU build of the embedding service has its own tag.
    images = {s: manifests.container(s)["image"] for s in SERVICES}
    assert len({_repository(i) for i in images.values()}) == 1, f"one image repository expected: {images}"
    assert len({i for s, i in images.items() if s != "embedding"}) == 1, images
    if not _gpu(manifests):
        assert images["embedding"] == images["ranker"]


def _repository(image: str) -> str:
    """`registry:5000/recsys:0.1.0` -> `registry:5000/recsys`."""
    head, _, last = image.rpartition("/")
    name = last.split("@")[0].split(":")[0]
    return f"{head}/{name}" if head else name


@pytest.mark.parametrize("svc", SERVICES)
def test_termination_grace_covers_shutdown(manifests: Manifests, svc: str) -> None:
    grace = manifests.pod_spec(svc).get("terminationGracePeriodSeconds", 30)
    assert grace > APP_SHUTDOWN_S


@pytest.mark.parametrize("svc", SERVICES)
def test_service(manifests: Manifests, svc: str) -> None:
    labels = manifests.pod_labels(svc)
    selecting = [s for s in manifests.of_kind("Service") if _selects(s["spec"].get("selector", {}), labels)]
    assert [s["metadata"]["name"] for s in selecting] == [svc], f"{svc}: one Service named after it"
    service = selecting[0]
    ports = service["spec"]["ports"]
    assert [p["name"] for p in ports] == ["grpc", "metrics"], "gRPC first (the gateway's address), then metrics"
    assert ports[0]["port"] == PORTS[svc]
    assert ports[0].get("targetPort", ports[0]["port"]) in ("grpc", PORTS[svc])
    assert ports[1]["port"] == METRICS_PORTS[svc] and ports[1].get("targetPort") == "metrics"
    headless = service["spec"].get("clusterIP") == "None"
    assert headless == (svc in BACKENDS), f"{svc}: backends headless (client-side round robin), gateway not"


@pytest.mark.parametrize("svc", SERVICES)
def test_hpa(manifests: Manifests, svc: str) -> None:
    hpas = [h for h in manifests.of_kind("HorizontalPodAutoscaler") if h["spec"]["scaleTargetRef"]["name"] == svc]
    assert len(hpas) == 1, f"{svc}: one HPA"
    hpa = hpas[0]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["kind"] == "Deployment"
    assert 1 <= hpa["spec"].get("minReplicas", 1) <= hpa["spec"]["maxReplicas"]
    assert "replicas" not in manifests.get("Deployment", svc)["spec"], f"{svc}: the HPA owns the replica count"


@pytest.mark.parametrize("svc", SERVICES)
def test_pdb(manifests: Manifests, svc: str) -> None:
    labels = manifests.pod_labels(svc)
    pdbs = [
        p for p in manifests.of_kind("PodDisruptionBudget") if _selects(p["spec"]["selector"]["matchLabels"], labels)
    ]
    assert len(pdbs) == 1, f"{svc}: one PDB"
    assert pdbs[0]["spec"].get("maxUnavailable") == 1


@pytest.mark.parametrize("svc", SERVICES)
def test_service_account(manifests: Manifests, svc: str) -> None:
    name = manifests.pod_spec(svc).get("serviceAccountName")
    assert name == svc, f"{svc}: its own ServiceAccount"
    manifests.get("ServiceAccount", name)


@pytest.mark.parametrize("svc", SERVICES)
def test_metrics_port(manifests: Manifests, svc: str) -> None:
    ports = {p["name"]: p["containerPort"] for p in manifests.container(svc)["ports"]}
    assert ports.get("metrics") == METRICS_PORTS[svc]
    assert manifests.env(svc).get(f"{svc.upper()}_METRICS_PORT") == str(METRICS_PORTS[svc])


def _documented_unset(svc: str) -> set[str]:
    """Settings without a default value, named in a comment of the service's ConfigMap (an empty string in the
    environment would not mean unset)."""
    text = (DEPLOY / "base" / svc / "configmap.yaml").read_text(encoding="utf-8")
    return set(re.findall(r"^\s*#\s*([A-Z][A-Z0-9_]+) is unset by default", text, re.MULTILINE))


@pytest.mark.parametrize("svc", SERVICES)
def test_every_setting_is_in_the_configmap(manifests: Manifests, svc: str) -> None:
    """Each setting of the service's settings class (the README's configuration table) is set in its ConfigMap or
    Deployment env, or, having no default, named in a ConfigMap comment."""
    settings = SETTINGS[svc]
    prefix = str(settings.model_config.get("env_prefix", ""))
    variables = {prefix + name.upper(): field for name, field in settings.model_fields.items()}
    env_names = set(manifests.env(svc)) | {var["name"] for var in manifests.container(svc).get("env", [])}
    unset = _documented_unset(svc)
    missing = sorted(v for v, field in variables.items() if v not in env_names and v not in unset)
    assert not missing, f"{svc}: settings missing from deploy/base/{svc}/configmap.yaml: {missing}"
    wrongly_unset = sorted(v for v in unset if v in variables and variables[v].get_default() is not None)
    assert not wrongly_unset, f"{svc}: these have defaults; set them rather than comment them: {wrongly_unset}"
    unknown = sorted(v for v in manifests.env(svc) if v.startswith(prefix) and v not in variables)
    assert not unknown, f"{svc}: the ConfigMap sets variables the service does not read: {unknown}"
    for variable, value in manifests.env(svc).items():
        if variable in variables:
            settings.model_validate({variable.removeprefix(prefix).lower(): value})


def test_servers_age_connections_so_new_replicas_get_traffic() -> None:
    options = dict(server_options(ServiceSettings()))
    assert options["grpc.max_connection_age_ms"] > 0
    assert options["grpc.max_connection_age_grace_ms"] > 0


# --- the call graph ----------------------------------------------------------------------------------------------

ADDRESS = re.compile(r"^dns:///(?P<host>[a-z0-9-]+)(?:\.[a-z0-9.-]+)?:(?P<port>\d+)$")


@pytest.mark.parametrize("backend", BACKENDS)
def test_gateway_addresses_point_at_backend_services(manifests: Manifests, backend: str) -> None:
    address = manifests.env("gateway").get(f"GATEWAY_{backend.upper()}_ADDRESS", "")
    match = ADDRESS.match(address)
    assert match, f"{address!r}: dns:///<service>[.<namespace>...]:<port> expected (client-side round robin)"
    service = manifests.get("Service", match["host"])
    assert match["host"] == backend
    assert int(match["port"]) == PORTS[backend] == service["spec"]["ports"][0]["port"]


def test_retriever_points_at_qdrant(manifests: Manifests) -> None:
    url = manifests.env("retriever").get("RETRIEVER_QDRANT_URL", "")
    match = re.match(r"^http://(?P<host>[a-z0-9-]+)(?:\.[a-z0-9.-]+)?:(?P<port>\d+)$", url)
    assert match, f"RETRIEVER_QDRANT_URL={url!r}"
    service = manifests.get("Service", match["host"])
    assert int(match["port"]) in {p["port"] for p in service["spec"]["ports"]}
    assert _selects(service["spec"]["selector"], manifests.pod_labels("qdrant", "StatefulSet"))


def test_qdrant_statefulset(manifests: Manifests) -> None:
    sts = manifests.get("StatefulSet", "qdrant")
    assert sts["spec"]["replicas"] == QDRANT_REPLICAS[manifests.source]
    assert sts["spec"]["volumeClaimTemplates"], "persistent volumes per peer"
    env = manifests.env("qdrant", "StatefulSet")
    assert env.get("QDRANT__CLUSTER__ENABLED") == "true"
    assert env.get("QDRANT__CLUSTER__P2P__PORT", "6335") == str(QDRANT_PORTS["p2p"])
    container = manifests.container("qdrant", "StatefulSet")
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == QDRANT_PORTS
    script = " ".join(container.get("command", []) + container.get("args", []))
    governing = sts["spec"]["serviceName"]
    assert f'--bootstrap "http://qdrant-0.{governing}:6335"' in script, "peers join through qdrant-0's p2p URL"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    for bound in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][bound])
    ctx = {**manifests.pod_spec("qdrant", "StatefulSet")["securityContext"], **container["securityContext"]}
    assert ctx["runAsNonRoot"] is True and ctx["readOnlyRootFilesystem"] is True
    assert ctx["allowPrivilegeEscalation"] is False and ctx["capabilities"]["drop"] == ["ALL"]
    headless = manifests.get("Service", governing)
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"].get("publishNotReadyAddresses") is True, "peers must find each other before ready"
    assert {p["port"] for p in headless["spec"]["ports"]} >= {QDRANT_PORTS["p2p"]}
    labels = manifests.pod_labels("qdrant", "StatefulSet")
    pdbs = [
        p for p in manifests.of_kind("PodDisruptionBudget") if _selects(p["spec"]["selector"]["matchLabels"], labels)
    ]
    assert len(pdbs) == 1 and pdbs[0]["spec"]["maxUnavailable"] == 1
    manifests.get("ServiceAccount", manifests.pod_spec("qdrant", "StatefulSet")["serviceAccountName"])


# --- overlays ----------------------------------------------------------------------------------------------------


def _gpu(manifests: Manifests) -> bool:
    return "nvidia.com/gpu" in manifests.container("embedding").get("resources", {}).get("limits", {})


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_namespace(overlay: str) -> None:
    manifests = Manifests(overlay, render(overlay))
    namespaces = manifests.of_kind("Namespace")
    assert len(namespaces) == 1
    name = namespaces[0]["metadata"]["name"]
    assert namespaces[0]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert {d["metadata"].get("namespace") for d in manifests.docs if d["kind"] != "Namespace"} == {name}


def test_gpu_component_only_in_prod(manifests: Manifests) -> None:
    embedding = manifests.pod_spec("embedding")
    env = manifests.env("embedding")
    if manifests.source != "prod":
        assert not _gpu(manifests)
        assert env["EMBEDDING_DEVICE"] == "cpu"
        return
    resources = manifests.container("embedding")["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == "1"
    assert embedding["nodeSelector"], "GPU pods go to GPU nodes"
    assert any(t["key"] == "nvidia.com/gpu" for t in embedding["tolerations"])
    assert env["EMBEDDING_DEVICE"] == "cuda:0"
    image, other = manifests.container("embedding")["image"], manifests.container("ranker")["image"]
    assert image != other and _repository(image) == _repository(other), "a CUDA tag of the same image"
    assert not any(_gpu_limit(manifests.container(s)) for s in SERVICES if s != "embedding")


def _gpu_limit(container: Doc) -> bool:
    return "nvidia.com/gpu" in container.get("resources", {}).get("limits", {})


def test_replica_ranges(manifests: Manifests) -> None:
    for hpa in manifests.of_kind("HorizontalPodAutoscaler"):
        spec = hpa["spec"]
        if manifests.source == "dev":
            assert spec["minReplicas"] == 1 and spec["maxReplicas"] <= 2, hpa["metadata"]["name"]
        else:
            assert spec["minReplicas"] >= 2, f"{hpa['metadata']['name']}: PDB maxUnavailable 1 needs 2 replicas"


# --- network policies (prod) -------------------------------------------------------------------------------------

OUTSIDE = "outside"  # any pod or address outside the suite's namespace


def _peer_matches(peer: Doc, who: str, labels: dict[str, str] | None) -> bool:
    """Whether a NetworkPolicy peer admits `who` (an app's pods with `labels`, or OUTSIDE). Conservative: a
    namespaceSelector or ipBlock is taken to admit outside traffic."""
    if who == OUTSIDE:
        return "ipBlock" in peer or "namespaceSelector" in peer
    if "ipBlock" in peer or labels is None:
        return "ipBlock" in peer  # pod IPs may fall inside a block
    selector = peer.get("podSelector")
    if selector is None:
        return "namespaceSelector" in peer  # every pod of the selected namespaces, ours included
    assert "matchExpressions" not in selector, "the evaluator reads matchLabels only"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _port_matches(ports: list[Doc] | None, port: int, protocol: str) -> bool:
    if not ports:
        return True
    for p in ports:
        if "port" not in p:
            if p.get("protocol", "TCP") == protocol:
                return True
            continue
        assert isinstance(p["port"], int), "the evaluator reads numeric ports only"
        if p.get("protocol", "TCP") == protocol and p["port"] <= port <= p.get("endPort", p["port"]):
            return True
    return False


def _policy_types(policy: Doc) -> list[str]:
    default = ["Ingress", "Egress"] if "egress" in policy["spec"] else ["Ingress"]
    types: list[str] = policy["spec"].get("policyTypes", default)
    return types


def _allowed(
    policies: Iterable[Doc],
    direction: str,
    pod: dict[str, str],
    peer: str,
    peer_labels: dict[str, str] | None,
    port: int,
    protocol: str = "TCP",
) -> bool:
    """Kubernetes semantics: a pod no policy selects for `direction` is open; otherwise some rule must allow."""
    rules_key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    isolated = False
    for policy in policies:
        selector = policy["spec"]["podSelector"]
        assert "matchExpressions" not in selector
        if direction not in _policy_types(policy):
            continue
        if not all(pod.get(k) == v for k, v in selector.get("matchLabels", {}).items()):
            continue
        isolated = True
        for rule in policy["spec"].get(rules_key, []):
            peers = rule.get(peers_key)
            peer_ok = not peers or any(_peer_matches(p, peer, peer_labels) for p in peers)
            if peer_ok and _port_matches(rule.get("ports"), port, protocol):
                return True
    return not isolated


# The calls the suite makes with the network policies on; components add theirs to it.
CALL_GRAPH = (
    {(OUTSIDE, "gateway", PORTS["gateway"])}
    | {("gateway", b, PORTS[b]) for b in BACKENDS}
    | {("retriever", "qdrant", QDRANT_PORTS["http"]), ("retriever", "qdrant", QDRANT_PORTS["grpc"])}
    | {("qdrant", "qdrant", p) for p in QDRANT_PORTS.values()}
)


def reachable(
    manifests: Manifests, extra_apps: dict[str, dict[str, str]], extra_ports: dict[str, list[int]]
) -> set[tuple[str, str, int]]:
    """Every (source, destination, port) the rendered NetworkPolicies let through, between the five services,
    Qdrant, the outside and ``extra_apps`` (pod labels by name), over each one's ports (``extra_ports`` for the
    extra apps that listen)."""
    policies = manifests.of_kind("NetworkPolicy")
    apps = {svc: manifests.pod_labels(svc) for svc in SERVICES}
    apps["qdrant"] = manifests.pod_labels("qdrant", "StatefulSet")
    apps |= extra_apps
    ports = {svc: [PORTS[svc]] for svc in SERVICES} | {"qdrant": list(QDRANT_PORTS.values())} | extra_ports
    allowed = set()
    for src in [OUTSIDE, *apps]:
        for dst, dst_ports in ports.items():
            for port in dst_ports:
                egress = src == OUTSIDE or _allowed(policies, "Egress", apps[src], dst, apps[dst], port)
                if egress and _allowed(policies, "Ingress", apps[dst], src, apps.get(src), port):
                    allowed.add((src, dst, port))
    return allowed


def test_network_policies_allow_exactly_the_call_graph() -> None:
    manifests = Manifests("prod", render("prod"))
    policies = manifests.of_kind("NetworkPolicy")
    assert policies, "prod includes components/network-policies"
    apps = {svc: manifests.pod_labels(svc) for svc in SERVICES}
    apps["qdrant"] = manifests.pod_labels("qdrant", "StatefulSet")
    allowed = reachable(manifests, {}, {})
    assert allowed == CALL_GRAPH, f"extra: {sorted(allowed - CALL_GRAPH)}; missing: {sorted(CALL_GRAPH - allowed)}"

    for app, labels in apps.items():
        assert _allowed(policies, "Egress", labels, OUTSIDE, None, 53, "UDP"), f"{app}: DNS egress"
        assert not _allowed(policies, "Egress", labels, OUTSIDE, None, 443), f"{app}: no egress to the world"


# --- monitoring, training, autoscaling (issue: Kubernetes and operations) -----------------------------------------


def test_monitoring_component_scrapes_every_service() -> None:
    manifests = Manifests("prod", render("prod"))
    (monitor,) = manifests.of_kind("ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["namespace"] == manifests.get("Deployment", "gateway")["metadata"]["namespace"]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint.get("path", "/metrics") == "/metrics"
    selector = monitor["spec"]["selector"]["matchLabels"]
    scraped = {
        s["metadata"]["name"]
        for s in manifests.of_kind("Service")
        if _selects(selector, s["metadata"].get("labels", {})) and "metrics" in {p["name"] for p in s["spec"]["ports"]}
    }
    assert scraped == set(SERVICES)
    policies = manifests.of_kind("NetworkPolicy")
    for svc in SERVICES:
        labels = manifests.pod_labels(svc)
        assert _allowed(policies, "Ingress", labels, OUTSIDE, None, METRICS_PORTS[svc]), f"{svc}: scrape allowed"
    assert Manifests("dev", render("dev")).of_kind("ServiceMonitor") == [], "dev runs without the operator's CRDs"


def test_embedding_scales_on_in_flight_requests_on_gpus() -> None:
    manifests = Manifests("prod", render("prod"))
    (hpa,) = [h for h in manifests.of_kind("HorizontalPodAutoscaler") if h["metadata"]["name"] == "embedding"]
    pods = [m["pods"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert len(pods) == 1, "a custom per-pod metric"
    assert pods[0]["metric"]["name"] == rpc_metrics().in_flight._name, "the bootstrap's in-flight gauge"
    assert pods[0]["target"]["type"] == "AverageValue"


def test_prod_collections_are_sharded_and_replicated() -> None:
    manifests = Manifests("prod", render("prod"))
    env = manifests.env("retriever")
    peers = manifests.get("StatefulSet", "qdrant")["spec"]["replicas"]
    assert int(env["RETRIEVER_QDRANT_REPLICATION_FACTOR"]) == 2, "one peer down (the PDB) leaves every shard served"
    assert int(env["RETRIEVER_QDRANT_SHARDS"]) % peers == 0, "shards spread evenly over the peers"


def test_training_cronjob_publishes_into_the_rankers_checkpoints(manifests: Manifests) -> None:
    cronjob = manifests.get("CronJob", "ranker-train")
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    command = container["command"]
    assert command[:2] == ["recsys", "train"]
    state_dir = command[command.index("--state-dir") + 1]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v
    }
    writer = [m for name, m in mounts.items() if claims.get(name) == "ranker-checkpoints"]
    assert len(writer) == 1 and not writer[0].get("readOnly", False), "the job writes the ranker's checkpoint PVC"
    assert writer[0]["mountPath"] == f"{state_dir}/checkpoints", "recsys train writes <state-dir>/checkpoints"
    ranker_mounts = {m["name"]: m["mountPath"] for m in manifests.container("ranker")["volumeMounts"]}
    ranker_claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in manifests.pod_spec("ranker")["volumes"]
        if "persistentVolumeClaim" in v
    }
    (ranker_path,) = [ranker_mounts[n] for n, c in ranker_claims.items() if c == "ranker-checkpoints"]
    assert manifests.env("ranker")["RANKER_CHECKPOINT_DIR"] == ranker_path
    ctx = {**pod["securityContext"], **container["securityContext"]}
    assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] == UID and ctx["readOnlyRootFilesystem"] is True
    assert ctx["allowPrivilegeEscalation"] is False and ctx["capabilities"]["drop"] == ["ALL"]
    assert {"cpu", "memory"} <= set(container["resources"]["limits"])
    assert container["image"] == manifests.container("ranker")["image"], "the same image as the services"
    manifests.get("ServiceAccount", pod["serviceAccountName"])
    assert cronjob["spec"].get("suspend", False) == (manifests.source == "dev"), "dev trains on demand only"
