"""Contract: deploy/components/encoder-rollout follows the manifest rules (CONVENTIONS.md "Manifests"): a suspended
CronJob that runs `recsys reindex` (as the real CLI parses it) against the suite's four backends, the embedding
pods reading the encoder versions `recsys train` writes beside the ranker's checkpoints, and network policies that
let the reindex pods reach those four backends and nothing else. It is off unless an overlay enables it: the
checks render prod with the component added by a temporary overlay, and prod and dev with it appended to their own
components (in a copy of deploy/); dev has no network policies, and there the component must isolate no service."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from services.cli.main import build_parser, command_reindex
from services.common.encoders import BASE_TOKEN
from services.embedding.config import EmbeddingSettings
from services.embedding.versions import ENCODERS_DIR
from tests.contract.test_manifests import (
    BACKENDS,
    CALL_GRAPH,
    DEPLOY,
    K8S_VERSION,
    OUTSIDE,
    PORTS,
    SERVICES,
    UID,
    Doc,
    Manifests,
    _allowed,
    _load_yaml_docs,
    _read_kustomization_files,
    _selects,
    reachable,
    render,
    render_prod_with,
)

COMPONENT = DEPLOY / "components" / "encoder-rollout"
NAME = "recsys-reindex"
CHECKPOINTS_CLAIM = "ranker-checkpoints"
# A version as `recsys train` names one (services/common/versions.py: version_name).
VERSION = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{8}$")
SAMPLE_VERSION = "20260301T120000Z-0123abcd"
PLACEHOLDER = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}


def _kubectl() -> None:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed: the component cannot be rendered onto an overlay")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Manifests:
    _kubectl()
    return Manifests("prod+encoder-rollout", render_prod_with(COMPONENT, tmp_path_factory.mktemp("overlay")))


def _render_enabled_in(overlay: str, workdir: Path) -> Manifests:
    """The overlay with the component appended to its own `components`, as the header says to enable it (so the
    overlay's images and namespace apply to it, and it comes after the overlay's other components), rendered
    from a copy of deploy/."""
    _kubectl()
    tree = workdir / "deploy"
    shutil.copytree(DEPLOY, tree)
    path = tree / "overlays" / overlay / "kustomization.yaml"
    kustomization = yaml.safe_load(path.read_text(encoding="utf-8"))
    kustomization["components"] = [*kustomization.get("components", []), "../../components/encoder-rollout"]
    path.write_text(yaml.safe_dump(kustomization, sort_keys=False), encoding="utf-8")
    result = subprocess.run(
        ["kubectl", "kustomize", str(path.parent)], capture_output=True, text=True, check=True, timeout=120
    )
    return Manifests(f"{overlay} enabling encoder-rollout", _load_yaml_docs(result.stdout))


@pytest.fixture(scope="module")
def enabled_in_prod(tmp_path_factory: pytest.TempPathFactory) -> Manifests:
    return _render_enabled_in("prod", tmp_path_factory.mktemp("tree"))


@pytest.fixture(scope="module")
def enabled_in_dev(tmp_path_factory: pytest.TempPathFactory) -> Manifests:
    """dev has no components/network-policies."""
    return _render_enabled_in("dev", tmp_path_factory.mktemp("tree"))


@pytest.fixture(scope="module")
def component() -> Manifests:
    return Manifests("encoder-rollout-files", _read_kustomization_files(COMPONENT))


def _job_pod(manifests: Manifests) -> Doc:
    pod: Doc = manifests.get("CronJob", NAME)["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return pod


def _job_container(manifests: Manifests) -> Doc:
    (container,) = _job_pod(manifests)["containers"]
    result: Doc = container
    return result


def _quantity(value: str) -> float:
    if value.endswith("m"):
        return float(value[:-1]) / 1000
    if value[-2:] in UNITS:
        return float(value[:-2]) * UNITS[value[-2:]]
    return float(value)


def _command_with(container: Doc, values: dict[str, str]) -> list[str]:
    """The container's command as the kubelet runs it: each $(VAR) replaced by ``values[VAR]``."""
    return [PLACEHOLDER.sub(lambda m: values[m[1]], arg) for arg in container["command"]]


# --- schema ------------------------------------------------------------------------------------------------------


def test_every_document_is_valid_kubernetes(component: Manifests) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed")
    assert component.docs, "the component's resources"
    for doc in component.docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_patched_documents_are_valid_kubernetes(rendered: Manifests) -> None:
    """The patches are partial documents; what they make of prod's embedding Deployment and backend policies."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed")
    kubernetes_validate.validate(rendered.get("Deployment", "embedding"), K8S_VERSION, strict=True)
    for backend in BACKENDS:
        kubernetes_validate.validate(rendered.get("NetworkPolicy", backend), K8S_VERSION, strict=True)


# --- off by default ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_the_component_is_off_unless_an_overlay_enables_it(overlay: str) -> None:
    manifests = Manifests(overlay, render(overlay))
    assert NAME not in {d["metadata"]["name"] for d in manifests.docs}, overlay
    assert "EMBEDDING_ENCODER_DIR" not in manifests.env("embedding"), overlay
    claims = {v.get("persistentVolumeClaim", {}).get("claimName") for v in manifests.pod_spec("embedding")["volumes"]}
    assert CHECKPOINTS_CLAIM not in claims, overlay


# --- the job -----------------------------------------------------------------------------------------------------


def test_the_cronjob_is_a_suspended_template(component: Manifests) -> None:
    cronjob = component.get("CronJob", NAME)["spec"]
    assert cronjob["suspend"] is True, "run by hand: kubectl create job --from=cronjob/recsys-reindex ..."
    assert cronjob["concurrencyPolicy"] == "Forbid"
    job = cronjob["jobTemplate"]["spec"]
    assert job["backoffLimit"] <= 1
    assert job["activeDeadlineSeconds"] >= 3 * 3600, "a 1M-item catalog embeds for hours on CPUs"
    assert job["ttlSecondsAfterFinished"] > 0
    assert _job_pod(component)["restartPolicy"] == "Never"
    labels = cronjob["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/name"] == NAME


def test_the_command_is_recsys_reindex_against_the_suites_backends(component: Manifests, rendered: Manifests) -> None:
    container = _job_container(component)
    command = container["command"]
    assert command[:2] == ["recsys", "reindex"]
    env = {e["name"]: e for e in container["env"]}
    assert set(PLACEHOLDER.findall(" ".join(command))) <= set(env), "every $(VAR) is the container's own env"
    config = component.get("ConfigMap", NAME)["data"]

    for values in (config, {"REINDEX_ENCODER": SAMPLE_VERSION, "REINDEX_CATALOG": "books"}):
        args = build_parser().parse_args(_command_with(container, values)[1:])
        assert args.handler is command_reindex
        assert args.encoder == values["REINDEX_ENCODER"] and args.drop is None
        assert args.catalog == values["REINDEX_CATALOG"]
        assert args.switch is True, "the job switches once the copies agree"
        gateway = rendered.env("gateway")
        for backend in BACKENDS:
            address = getattr(args, backend)
            assert address == f"dns:///{backend}:{PORTS[backend]}", backend
            assert address == gateway[f"GATEWAY_{backend.upper()}_ADDRESS"], f"{backend}: the gateway's address"

    # docs/operations.md drops the old copy with a job whose command has these two replaced by --drop OLD.
    assert command[2:4] == ["--encoder", "$(REINDEX_ENCODER)"]
    drop = _command_with({"command": [*command[:2], "--drop", "OLD", *command[4:]]}, config)
    args = build_parser().parse_args(drop[1:])
    assert args.drop == "OLD" and args.encoder is None and args.handler is command_reindex


def test_the_settings_come_from_the_configmap_and_the_optional_token(component: Manifests) -> None:
    env = {e["name"]: e for e in _job_container(component)["env"]}
    config = component.get("ConfigMap", NAME)["data"]
    for key in ("REINDEX_ENCODER", "REINDEX_CATALOG"):
        ref = env[key]["valueFrom"]["configMapKeyRef"]
        assert ref["name"] == NAME and ref["key"] == key and key in config
        assert not ref.get("optional", False), "a missing setting stops the pod from starting"
    assert config["REINDEX_CATALOG"] == "", "empty: the default catalog"
    token = env["RECSYS_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert token == {"name": "recsys-auth-token", "key": "token", "optional": True}, "the console's Secret"
    assert env["HF_HUB_OFFLINE"]["value"] == "1" and env["TRANSFORMERS_OFFLINE"]["value"] == "1"


def test_the_placeholder_encoder_moves_no_catalog(component: Manifests) -> None:
    """Empty would be the base model (and `base` is the rollback): the placeholder must name no version, so an
    unset job stops at the embedding service's check before anything is written."""
    value = component.get("ConfigMap", NAME)["data"]["REINDEX_ENCODER"]
    assert value not in ("", BASE_TOKEN)
    assert not VERSION.match(value) and VERSION.match(SAMPLE_VERSION)


def test_container_follows_the_rules(component: Manifests, rendered: Manifests) -> None:
    pod = _job_pod(component)
    container = _job_container(component)
    assert pod["serviceAccountName"] == NAME and pod["automountServiceAccountToken"] is False
    assert component.get("ServiceAccount", NAME)["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == UID
    security = container["securityContext"]
    assert security["runAsNonRoot"] and security["runAsUser"] == UID
    assert security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"]
    assert security["capabilities"]["drop"] == ["ALL"] and not security.get("privileged", False)
    assert security["seccompProfile"]["type"] == "RuntimeDefault"
    resources = container["resources"]
    assert set(resources["requests"]) == set(resources["limits"]) == {"cpu", "memory"}
    for resource, request in resources["requests"].items():
        assert _quantity(request) <= _quantity(resources["limits"][resource]), resource
    assert container["image"] == "recsys", "the services' image, which the overlays map to their registry"
    empty_dirs = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts["/tmp"] in empty_dirs and set(mounts.values()) <= empty_dirs, "writes only to emptyDirs"
    env = {e["name"]: e.get("value") for e in container["env"]}
    for var in ("HF_HOME", "XDG_CACHE_HOME"):
        assert any(env[var] == m or env[var].startswith(m + "/") for m in mounts), f"{var} on an emptyDir"


# --- the embedding pods ------------------------------------------------------------------------------------------


def test_the_embedding_pods_read_the_encoders_beside_the_checkpoints(rendered: Manifests) -> None:
    pod = rendered.pod_spec("embedding")
    container = rendered.container("embedding")
    assert [s["configMapRef"]["name"] for s in container["envFrom"]] == ["embedding-config"], "envFrom kept"
    (volume,) = [v for v in pod["volumes"] if v.get("persistentVolumeClaim", {}).get("claimName") == CHECKPOINTS_CLAIM]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    assert mount["readOnly"] is True and volume["persistentVolumeClaim"]["readOnly"] is True
    encoder_dir = rendered.env("embedding")["EMBEDDING_ENCODER_DIR"]
    assert encoder_dir == f"{mount['mountPath']}/{ENCODERS_DIR}", "recsys train writes <checkpoints>/encoders"
    settings = EmbeddingSettings.model_validate({"encoder_dir": encoder_dir})
    assert settings.encoder_dir == Path(encoder_dir)
    assert rendered.env("ranker")["RANKER_CHECKPOINT_DIR"] == mount["mountPath"], "the ranker's checkpoints"
    claim = rendered.get("PersistentVolumeClaim", CHECKPOINTS_CLAIM)
    assert "ReadWriteMany" in claim["spec"]["accessModes"], "embedding and ranker pods on several nodes"
    other = {m["mountPath"] for m in container["volumeMounts"] if m["name"] != volume["name"]}
    assert other == {"/tmp", "/var/cache/recsys"}, "the base's mounts stay"


# --- network policies --------------------------------------------------------------------------------------------


def _job_labels(manifests: Manifests) -> dict[str, str]:
    labels: dict[str, str] = manifests.get("CronJob", NAME)["spec"]["jobTemplate"]["spec"]["template"]["metadata"][
        "labels"
    ]
    return labels


@pytest.mark.parametrize("source", ["rendered", "enabled_in_prod"])
def test_the_reindex_pods_reach_exactly_the_four_backends(request: pytest.FixtureRequest, source: str) -> None:
    rendered: Manifests = request.getfixturevalue(source)
    policies = rendered.of_kind("NetworkPolicy")
    apps = {svc: rendered.pod_labels(svc) for svc in SERVICES} | {"reindex": _job_labels(rendered)}
    expected = CALL_GRAPH | {("reindex", b, PORTS[b]) for b in BACKENDS}
    allowed = reachable(rendered, {"reindex": apps["reindex"]}, {})
    assert allowed == expected, f"extra: {sorted(allowed - expected)}; missing: {sorted(expected - allowed)}"
    assert _allowed(policies, "Egress", apps["reindex"], OUTSIDE, None, 53, "UDP"), "DNS"
    assert not _allowed(policies, "Egress", apps["reindex"], OUTSIDE, None, 443), "no egress to the world"
    for src in [OUTSIDE, *SERVICES]:
        assert not _allowed(policies, "Ingress", apps["reindex"], src, apps.get(src), 8080), f"{src} -> reindex"


def test_enabled_in_prod_it_takes_the_overlays_image_and_namespace(enabled_in_prod: Manifests) -> None:
    assert _job_container(enabled_in_prod)["image"] == enabled_in_prod.container("ranker")["image"]
    namespace = enabled_in_prod.get("Deployment", "ranker")["metadata"]["namespace"]
    for kind in ("CronJob", "ConfigMap", "ServiceAccount", "NetworkPolicy"):
        assert enabled_in_prod.get(kind, NAME)["metadata"]["namespace"] == namespace, kind
    embedding = enabled_in_prod.env("embedding")
    assert embedding["EMBEDDING_ENCODER_DIR"].endswith(f"/{ENCODERS_DIR}") and embedding["EMBEDDING_DEVICE"] == "cuda:0"


def test_without_network_policies_the_component_isolates_no_service(enabled_in_dev: Manifests) -> None:
    """dev has no components/network-policies: the component's rules for the backends must not become the only
    policies selecting them (which would cut the gateway off), and the job must still resolve and reach them."""
    policies = enabled_in_dev.of_kind("NetworkPolicy")
    for svc in SERVICES:
        labels = enabled_in_dev.pod_labels(svc)
        assert not [p for p in policies if _selects(p["spec"]["podSelector"]["matchLabels"], labels)], svc
    job = _job_labels(enabled_in_dev)
    for backend in BACKENDS:
        labels = enabled_in_dev.pod_labels(backend)
        assert _allowed(policies, "Egress", job, backend, labels, PORTS[backend]), backend
        assert _allowed(policies, "Ingress", labels, "reindex", job, PORTS[backend]), backend
    assert _allowed(policies, "Egress", job, OUTSIDE, None, 53, "UDP"), "DNS without allow-dns"
    assert enabled_in_dev.env("embedding")["EMBEDDING_ENCODER_DIR"].endswith(f"/{ENCODERS_DIR}")


def test_the_runbook_commands_name_the_component() -> None:
    """The header says how to enable and run it; docs/operations.md has the runbook."""
    header = (COMPONENT / "kustomization.yaml").read_text(encoding="utf-8")
    assert "- ../../components/encoder-rollout" in header
    assert f"create job --from=cronjob/{NAME}" in header
    runbook = (DEPLOY.parent / "docs" / "operations.md").read_text(encoding="utf-8")
    for text in (f"create job --from=cronjob/{NAME}", "components/encoder-rollout", "recsys reindex --drop"):
        assert text in runbook, text
    assert "components/encoder-rollout" in (DEPLOY / "README.md").read_text(encoding="utf-8")
