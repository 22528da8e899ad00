"""Fuzzing every RPC of the five running services with generated requests and malformed bytes: no answer is
INTERNAL, UNKNOWN or a hang, and every service still reports SERVING afterwards.

The normal run sends a few hundred requests in all (derandomized, so CI is stable); the slow run at least
10,000 per service: `.venv/bin/python -m pytest -m slow tests/integration/test_fuzz.py`."""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recsys.gateway.v1 import gateway_pb2 as pb
from services.cli.suite import FULL_NAMES
from tests.integration.conftest import RunningSuite, _alive
from tests.integration.fuzzing import FORBIDDEN, MODULES, Method, call_raw, malformed, methods, wire_bytes

FAST_EXAMPLES = 12
SLOW_PER_SERVICE = int(os.environ.get("RECSYS_FUZZ_PER_SERVICE", "10000"))
ALL = [method for service in MODULES for method in methods(service)]
COUNTS: Counter[str] = Counter()


@pytest.fixture(scope="module")
def channels(suite: RunningSuite) -> Iterator[dict[str, grpc.Channel]]:
    opened = {service: grpc.insecure_channel(suite.address(service)) for service in MODULES}
    # A few items in the fuzz namespace, so generated events and profiles reach the engine.
    gateway = opened["gateway"].unary_unary(
        "/recsys.gateway.v1.GatewayService/UpsertItems",
        request_serializer=pb.UpsertItemsRequest.SerializeToString,
        response_deserializer=pb.UpsertItemsResponse.FromString,
    )
    items = [pb.CatalogItem(item_id=f"fuzz-item-{n}", title=f"Fuzz item {n}") for n in range(3)]
    gateway(pb.UpsertItemsRequest(items=items), timeout=60)
    yield opened
    for channel in opened.values():
        channel.close()


def _known(suite: RunningSuite) -> list[str]:
    users = sorted({i.user_id for i in suite.dataset.interactions})[:5]
    return [item.item_id for item in suite.dataset.items[:10]] + users


def _check_alive(suite: RunningSuite, channels: dict[str, grpc.Channel]) -> None:
    for service, channel in channels.items():
        assert _alive(suite.pids[service]), f"the {service} service died"
        request = health_pb2.HealthCheckRequest(service=FULL_NAMES[service])
        status = health_pb2_grpc.HealthStub(channel).Check(request, timeout=10).status
        assert status == health_pb2.HealthCheckResponse.SERVING, service


def _fuzz(suite: RunningSuite, channels: dict[str, grpc.Channel], method: Method, examples: int, slow: bool) -> None:
    channel = channels[method.service]
    seen: Counter[str] = Counter()

    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=not slow,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(payload=st.one_of(wire_bytes(method, _known(suite)), malformed()))
    def run(payload: bytes) -> None:
        code = call_raw(channel, method, payload)
        seen[code.name] += 1
        assert code not in FORBIDDEN, f"{method.path} answered {code.name} to {payload[:300]!r}"

    run()
    COUNTS.update({f"{method.path} {code}": n for code, n in seen.items()})
    _check_alive(suite, channels)


@pytest.mark.parametrize("method", ALL, ids=[m.path.rsplit(".", 1)[-1] for m in ALL])
def test_fuzz_every_rpc(suite: RunningSuite, channels: dict[str, grpc.Channel], method: Method) -> None:
    _fuzz(suite, channels, method, FAST_EXAMPLES, slow=False)


@pytest.mark.slow
@pytest.mark.parametrize("method", ALL, ids=[m.path.rsplit(".", 1)[-1] for m in ALL])
def test_fuzz_every_rpc_long(suite: RunningSuite, channels: dict[str, grpc.Channel], method: Method) -> None:
    per_method = math.ceil(SLOW_PER_SERVICE / len(methods(method.service)))
    _fuzz(suite, channels, method, per_method, slow=True)
    print(f"\n{method.path}: {per_method} examples, answers {dict(COUNTS)}")
