"""Each real service serves Prometheus metrics on its gRPC port + 1000, and the documented names move when the
gateway serves requests (docs/operations.md, "Metrics")."""

from __future__ import annotations

import re
import urllib.request
import uuid

import grpc
import pytest

from recsys.gateway.v1 import gateway_pb2 as pb
from recsys.gateway.v1 import gateway_pb2_grpc
from services.cli.suite import SERVICES
from tests.conftest import REPO_ROOT
from tests.integration.conftest import RunningSuite

SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?P<labels>\{.*\})? (?P<value>\S+)$")


def scrape(suite: RunningSuite, service: str) -> list[tuple[str, str, float]]:
    with urllib.request.urlopen(suite.metrics_url(service), timeout=5) as response:
        text = response.read().decode()
    samples = []
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if match:
            samples.append((match["name"], match["labels"] or "", float(match["value"])))
    return samples


def total(samples: list[tuple[str, str, float]], name: str, *label_parts: str) -> float:
    return sum(v for n, labels, v in samples if n == name and all(p in labels for p in label_parts))


@pytest.mark.parametrize("service", SERVICES)
def test_every_service_serves_metrics(suite: RunningSuite, service: str) -> None:
    names = {name for name, _, _ in scrape(suite, service)}
    assert "process_resident_memory_bytes" in names, "the process collector comes with the default registry"


def test_documented_metrics_move_with_requests(suite: RunningSuite, gateway_channel: grpc.Channel) -> None:
    before = {service: scrape(suite, service) for service in SERVICES}
    gateway = gateway_pb2_grpc.GatewayServiceStub(gateway_channel)
    user = f"metrics-user-{uuid.uuid4().hex[:8]}"
    item = suite.dataset.items[0].item_id
    gateway.RecordEvents(pb.RecordEventsRequest(events=[pb.Event(user_id=user, item_id=item)]))
    for _ in range(3):
        assert gateway.Recommend(pb.RecommendRequest(user_id=user, k=5, query="glue")).items
    after = {service: scrape(suite, service) for service in SERVICES}

    moving: dict[str, list[tuple[str, ...]]] = {
        "gateway": [
            ("recsys_grpc_server_requests_total", 'grpc_method="Recommend"', 'grpc_code="OK"'),
            ("recsys_grpc_server_request_seconds_count", 'grpc_method="Recommend"'),
        ],
        "preprocessor": [("recsys_grpc_server_requests_total", 'grpc_method="CleanTexts"')],
        "embedding": [
            ("recsys_grpc_server_requests_total", 'grpc_method="EmbedTexts"'),
            ("recsys_embedding_batch_size_count",),
            ("recsys_embedding_queue_wait_seconds_count",),
        ],
        "retriever": [("recsys_retriever_search_seconds_count",)],
        "ranker": [
            ("recsys_ranker_batch_candidates_count",),
            ("recsys_ranker_queue_wait_seconds_count",),
        ],
    }
    for service, checks in moving.items():
        for name, *labels in checks:
            assert total(after[service], name, *labels) > total(before[service], name, *labels), (service, name)
    assert total(after["retriever"], "recsys_retriever_items") > 0
    assert total(after["ranker"], "recsys_ranker_model_info") == 1
    assert total(after["embedding"], "recsys_embedding_model_info", 'model_id="sentence-transformers/') == 1


def test_every_metric_is_documented(suite: RunningSuite) -> None:
    docs = (REPO_ROOT / "docs" / "operations.md").read_text()
    ours = {
        re.sub(r"_(total|count|sum|bucket|created|info)$", "", name)
        for service in SERVICES
        for name, _, _ in scrape(suite, service)
        if name.startswith("recsys_")
    }
    missing = sorted(name for name in ours if f"`{name}" not in docs)
    assert not missing, f"docs/operations.md does not name {missing}"
