"""Contract: deploy/components/catalog-1m gives the ranker the memory that a 1M-item checkpoint was measured to
need (bench/checkpoint_scale.py, docs/results/checkpoint_scale-1m.json): one model within the request, as many as
it may hold at once within the limit. Off unless an overlay enables it; checked on prod with the component added,
in a temporary overlay."""

from __future__ import annotations

import json
import shutil

import pytest

from services.ranker.training import TrainConfig
from tests.contract.test_manifests import DEPLOY, K8S_VERSION, Manifests, render, render_prod_with

COMPONENT = DEPLOY / "components" / "catalog-1m"
MEASURED = DEPLOY.parent / "docs" / "results" / "checkpoint_scale-1m.json"
PROCESS_BYTES = 0.5e9  # the ranker process before any checkpoint: torch and the service (~0.45 GB measured)
UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}


def _bytes(quantity: str) -> float:
    return float(quantity[:-2]) * UNITS[quantity[-2:]]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Manifests:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed: the component cannot be rendered onto an overlay")
    return Manifests("prod+catalog-1m", render_prod_with(COMPONENT, tmp_path_factory.mktemp("overlay")))


def _model_bytes() -> float:
    """Resident growth of loading a 1M-item checkpoint with the default graph weights kept per item."""
    runs = json.loads(MEASURED.read_text(encoding="utf-8"))["results"]
    (run,) = [r for r in runs if r["items"] == 1_000_000 and r["keep"] == TrainConfig().graph_keep]
    return float(run["load_rss_mb"]) * 1e6


def test_one_model_fits_the_request_and_every_held_model_the_limit(rendered: Manifests) -> None:
    resources = rendered.container("ranker")["resources"]
    held = int(rendered.env("ranker")["RANKER_MAX_LOADED_MODELS"])
    assert _bytes(resources["requests"]["memory"]) >= _model_bytes() + PROCESS_BYTES
    assert _bytes(resources["limits"]["memory"]) >= held * _model_bytes() + PROCESS_BYTES


def test_the_rendered_ranker_is_valid_kubernetes(rendered: Manifests) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed")
    kubernetes_validate.validate(rendered.get("Deployment", "ranker"), K8S_VERSION, strict=True)


def test_the_component_is_off_unless_an_overlay_enables_it() -> None:
    for overlay in ("dev", "prod"):
        ranker = Manifests(overlay, render(overlay)).container("ranker")
        assert _bytes(ranker["resources"]["requests"]["memory"]) < 1 * UNITS["Gi"], overlay


def test_the_measurement_is_the_one_the_component_cites() -> None:
    assert MEASURED.name in (COMPONENT / "kustomization.yaml").read_text(encoding="utf-8")
    assert MEASURED.is_file()
