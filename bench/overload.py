"""Admission control under overload: a service whose calls take 0.5 s, bound B concurrent calls, hit by 4 x B
concurrent callers in waves. Every call beyond the bound must be RESOURCE_EXHAUSTED at once; memory flat.

    .venv/bin/python bench/overload.py [--bound 16] [--waves 20]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import platform
import time
from multiprocessing.connection import Connection

import grpc

from recsys.gateway.v1 import gateway_pb2 as pb
from recsys.gateway.v1 import gateway_pb2_grpc
from services.common.server import RunningServer
from services.common.settings import ServiceSettings


class Slow(gateway_pb2_grpc.GatewayServiceServicer):
    async def DeleteUser(
        self, request: pb.DeleteUserRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteUserResponse:
        await asyncio.sleep(0.5)
        return pb.DeleteUserResponse()


class App:
    service_name = "recsys.gateway.v1.GatewayService"

    def register(self, server: grpc.aio.Server) -> None:
        gateway_pb2_grpc.add_GatewayServiceServicer_to_server(Slow(), server)

    async def warm_up(self) -> None:
        return None

    async def close(self) -> None:
        return None


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def serve(bound: int, pipe: Connection) -> None:
    """The server in its own process, as in production: the client's work does not slow its answers."""

    async def run() -> None:
        settings = ServiceSettings(port=0, drain_s=0, grace_period_s=1, max_concurrent_rpcs=bound)
        server = RunningServer(settings, App())
        await server.start()
        await server.warm_up()
        pipe.send(server.port)
        await asyncio.get_running_loop().run_in_executor(None, pipe.recv)
        await server.stop()

    asyncio.run(run())


async def main(bound: int, waves: int) -> None:
    ours, theirs = multiprocessing.Pipe()
    child = multiprocessing.Process(target=serve, args=(bound, theirs))
    child.start()
    port = ours.recv()
    rejected: list[float] = []
    served = 0
    rss: list[float] = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)

        async def call() -> None:
            nonlocal served
            started = time.perf_counter()
            try:
                await stub.DeleteUser(pb.DeleteUserRequest(user_id="u"), timeout=5)
                served += 1
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
                rejected.append((time.perf_counter() - started) * 1000)

        for _ in range(waves):
            await asyncio.gather(*(call() for _ in range(4 * bound)))
            rss.append(rss_mb(child.pid or 0))
    ours.send("stop")
    child.join()
    rejected.sort()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}")
    print(
        "| bound | callers | calls | served | rejected | rejection p50 ms | p99 ms | max ms "
        "| server RSS first/last wave MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    p = lambda q: rejected[min(len(rejected) - 1, int(q * len(rejected)))]  # noqa: E731
    print(
        f"| {bound} | {4 * bound} | {4 * bound * waves} | {served} | {len(rejected)} | {p(0.5):.2f} | {p(0.99):.2f} "
        f"| {rejected[-1]:.2f} | {rss[0]:.0f} / {rss[-1]:.0f} |"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bound", type=int, default=16)
    parser.add_argument("--waves", type=int, default=20)
    args = parser.parse_args()
    asyncio.run(main(args.bound, args.waves))
