"""The shared bootstrap's defences: TLS and mutual TLS by settings, the bearer token, malformed bytes on the
wire, the default deadline, admission control under overload, reconnection, and logs without request content."""

from __future__ import annotations

import asyncio
import datetime
import io
import ipaddress
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, redirect_stderr
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import SecretStr

from recsys.gateway.v1 import gateway_pb2 as pb
from recsys.gateway.v1 import gateway_pb2_grpc
from services.common.clients import call_timeout, open_channel
from services.common.errors import OverloadedError
from services.common.logging import configure_logging
from services.common.server import RunningServer
from services.common.settings import ServiceSettings
from services.gateway.app import backend_credentials
from services.gateway.config import GatewaySettings

SECRET = "jo.secret@example.com wants 4155550100"


class Probe(gateway_pb2_grpc.GatewayServiceServicer):
    """DeleteUser sleeps `delay_s`, reports the timeout it would give a backend, or fails on request."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s

    async def DeleteUser(self, request: pb.DeleteUserRequest, context: grpc.aio.ServicerContext) -> Any:
        if request.user_id == "crash":
            secret = SECRET  # a local variable a traceback renderer could show
            raise RuntimeError(f"bug while handling a request of {len(secret)} characters")
        if request.user_id == "overloaded":
            raise OverloadedError("busy")
        await asyncio.sleep(self.delay_s)
        context.set_trailing_metadata((("backend-timeout", f"{call_timeout(100.0):.3f}"),))
        return pb.DeleteUserResponse()


class ProbeApp:
    service_name = "recsys.gateway.v1.GatewayService"

    def __init__(self, delay_s: float = 0.0) -> None:
        self.servicer = Probe(delay_s)

    def register(self, server: grpc.aio.Server) -> None:
        gateway_pb2_grpc.add_GatewayServiceServicer_to_server(self.servicer, server)

    async def warm_up(self) -> None:
        return None

    async def close(self) -> None:
        return None


@asynccontextmanager
async def running(settings: ServiceSettings, delay_s: float = 0.0) -> AsyncIterator[RunningServer]:
    server = RunningServer(settings, ProbeApp(delay_s))
    await server.start()
    await server.warm_up()
    try:
        yield server
    finally:
        await server.stop()


def plain(**overrides: Any) -> ServiceSettings:
    return ServiceSettings(**{"port": 0, "drain_s": 0, "grace_period_s": 0.5, **overrides})


# ---- certificates ------------------------------------------------------------------------------------


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(folder: Path, stem: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
    (folder / f"{stem}.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    (folder / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def make_certificates(folder: Path) -> Path:
    """A CA, a server certificate for localhost/127.0.0.1 and a client certificate, all signed by the CA; and
    a second CA with its own client certificate that the server must refuse."""
    now = datetime.datetime.now(datetime.UTC)
    for prefix in ("", "rogue-"):
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = (
            x509.CertificateBuilder()
            .subject_name(_name(f"{prefix}test ca"))
            .issuer_name(_name(f"{prefix}test ca"))
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        _write(folder, f"{prefix}ca", ca_key, ca)
        leaves = {
            "server": (ExtendedKeyUsageOID.SERVER_AUTH, ["localhost"]),
            "client": (ExtendedKeyUsageOID.CLIENT_AUTH, []),
        }
        for stem, (usage, names) in leaves.items():
            key = ec.generate_private_key(ec.SECP256R1())
            builder = (
                x509.CertificateBuilder()
                .subject_name(_name(f"{prefix}{stem}"))
                .issuer_name(ca.subject)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            )
            if names:
                sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
                sans.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
                builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
            _write(folder, f"{prefix}{stem}", key, builder.sign(ca_key, hashes.SHA256()))
    return folder


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_certificates(tmp_path_factory.mktemp("certs"))


def gateway_client(certs: Path, port: int, client: str | None = "client") -> grpc.aio.Channel:
    settings = GatewaySettings(
        backend_tls_ca_file=certs / "ca.crt",
        backend_tls_cert_file=certs / f"{client}.crt" if client else None,
        backend_tls_key_file=certs / f"{client}.key" if client else None,
    )
    target = f"localhost:{port}"
    return open_channel(target, "recsys.gateway.v1.GatewayService", (), 1 << 20, backend_credentials(settings))


async def _delete(channel: grpc.aio.Channel, user_id: str = "u", **kwargs: Any) -> grpc.StatusCode:
    try:
        await gateway_pb2_grpc.GatewayServiceStub(channel).DeleteUser(
            pb.DeleteUserRequest(user_id=user_id), timeout=kwargs.pop("timeout", 5), **kwargs
        )
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


# ---- TLS ---------------------------------------------------------------------------------------------


async def test_mutual_tls_admits_only_clients_with_a_certificate_from_the_ca(certs: Path) -> None:
    settings = plain(
        tls_cert_file=certs / "server.crt", tls_key_file=certs / "server.key", tls_client_ca_file=certs / "ca.crt"
    )
    async with running(settings) as server:
        async with gateway_client(certs, server.port) as channel:
            assert await _delete(channel) == grpc.StatusCode.OK
        async with gateway_client(certs, server.port, client="rogue-client") as channel:
            assert await _delete(channel, timeout=2) == grpc.StatusCode.UNAVAILABLE
        async with gateway_client(certs, server.port, client=None) as channel:
            assert await _delete(channel, timeout=2) == grpc.StatusCode.UNAVAILABLE
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            assert await _delete(channel, timeout=2) == grpc.StatusCode.UNAVAILABLE


async def test_tls_without_client_certificates(certs: Path) -> None:
    async with running(plain(tls_cert_file=certs / "server.crt", tls_key_file=certs / "server.key")) as server:
        async with gateway_client(certs, server.port, client=None) as channel:
            assert await _delete(channel) == grpc.StatusCode.OK
        # A server certificate from another CA is refused by the client.
        settings = GatewaySettings(backend_tls_ca_file=certs / "rogue-ca.crt")
        target = f"localhost:{server.port}"
        async with open_channel(target, "x", (), 1 << 20, backend_credentials(settings)) as channel:
            assert await _delete(channel, timeout=2) == grpc.StatusCode.UNAVAILABLE


def test_tls_settings_come_in_pairs(certs: Path) -> None:
    with pytest.raises(ValueError, match="tls_key_file"):
        plain(tls_cert_file=certs / "server.crt")
    with pytest.raises(ValueError, match="backend_tls_ca_file"):
        GatewaySettings(backend_tls_cert_file=certs / "client.crt", backend_tls_key_file=certs / "client.key")


# ---- bearer token, malformed bytes, deadlines ------------------------------------------------------------


async def test_bearer_token_guards_the_api_but_not_health_or_reflection() -> None:
    async with (
        running(plain(auth_token=SecretStr("s3cret"))) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        assert await _delete(channel) == grpc.StatusCode.UNAUTHENTICATED
        wrong = (("authorization", "Bearer nope"),)
        assert await _delete(channel, metadata=wrong) == grpc.StatusCode.UNAUTHENTICATED
        right = (("authorization", "Bearer s3cret"),)
        assert await _delete(channel, metadata=right) == grpc.StatusCode.OK
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
        assert health.status == health_pb2.HealthCheckResponse.SERVING


async def test_malformed_bytes_are_invalid_argument_not_unknown() -> None:
    async with running(plain()) as server, grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        raw = channel.unary_unary("/recsys.gateway.v1.GatewayService/DeleteUser")
        for payload in (b"\xff\xff\xff", b"\x0a\x02\xc3\x28", b"\x0a\x05ab", b"\x08" * 7):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await raw(payload, timeout=2)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
        assert await _delete(channel) == grpc.StatusCode.OK


async def test_default_deadline_bounds_backend_calls_when_the_caller_sets_none() -> None:
    async with (
        running(plain(default_deadline_s=3.0)) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        call = stub.DeleteUser(pb.DeleteUserRequest(user_id="u"))
        await call
        assert 2.0 < float(dict(await call.trailing_metadata())["backend-timeout"]) <= 3.0
        call = stub.DeleteUser(pb.DeleteUserRequest(user_id="u"), timeout=1.0)
        await call
        assert float(dict(await call.trailing_metadata())["backend-timeout"]) <= 1.0


# ---- admission, reconnection ---------------------------------------------------------------------------


async def test_overload_is_refused_at_once_with_resource_exhausted() -> None:
    bound = 4
    async with (
        running(plain(max_concurrent_rpcs=bound), delay_s=0.5) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        await _delete(channel)  # connected before timing

        async def timed() -> tuple[grpc.StatusCode, float]:
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                await stub.DeleteUser(pb.DeleteUserRequest(user_id="u"), timeout=5)
            except grpc.aio.AioRpcError as error:
                code = error.code()
            return code, (time.perf_counter() - started) * 1000

        results = await asyncio.gather(*(timed() for _ in range(4 * bound)))
    rejected = [ms for code, ms in results if code == grpc.StatusCode.RESOURCE_EXHAUSTED]
    served = [ms for code, ms in results if code == grpc.StatusCode.OK]
    # Rejections come before the slow handler runs; how fast is measured by bench/overload.py, not here.
    assert len(served) == bound and len(rejected) == 3 * bound, results
    assert max(rejected) < min(served), results


async def test_a_channel_reaches_a_backend_restarted_on_the_same_port() -> None:
    async with running(plain()) as first:
        port = first.port
        channel = open_channel(f"127.0.0.1:{port}", "recsys.gateway.v1.GatewayService", ["DeleteUser"])
        assert await _delete(channel) == grpc.StatusCode.OK
    assert await _delete(channel, timeout=1) == grpc.StatusCode.UNAVAILABLE
    await asyncio.sleep(1.0)  # long enough for grpc's reconnect backoff to grow
    async with running(plain(port=port)):
        started = time.monotonic()
        while await _delete(channel, timeout=1) != grpc.StatusCode.OK:
            assert time.monotonic() - started < 5, "the channel did not reconnect"
            await asyncio.sleep(0.05)
    await channel.close()


# ---- logs --------------------------------------------------------------------------------------------


async def test_logs_hold_no_request_content_even_for_a_crash() -> None:
    buffer = io.StringIO()
    with redirect_stderr(buffer):
        configure_logging("probe", "debug", json=True)
        async with running(plain()) as server, grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            assert await _delete(channel, SECRET) == grpc.StatusCode.OK
            assert await _delete(channel, "crash") == grpc.StatusCode.INTERNAL
            assert await _delete(channel, "overloaded") == grpc.StatusCode.RESOURCE_EXHAUSTED
    configure_logging("tests", "info", json=False)
    lines = [json.loads(line) for line in buffer.getvalue().splitlines() if line.startswith("{")]
    assert any(line.get("event") == "unhandled error" for line in lines)
    access = [line for line in lines if line.get("event") == "rpc"]
    assert {line["code"] for line in access} >= {"OK", "INTERNAL", "RESOURCE_EXHAUSTED"}
    for line in access:
        assert set(line) <= {"event", "method", "code", "ms", "level", "timestamp", "service", "request_id"}
    for fragment in ("jo.secret", "4155550100", "example.com"):
        assert fragment not in buffer.getvalue()
