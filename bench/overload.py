"""Admission control under overload: a service whose calls take 0.5 s, bound B concurrent calls, hit by 4 x B
concurrent callers in waves, spread over several client processes as callers in other pods would be (one
Python process starting 64 calls at once measures its own event loop). Every call beyond the bound must be
RESOURCE_EXHAUSTED at once; memory flat. The first wave (connections) is not counted.

    .venv/bin/python bench/overload.py [--bound 16] [--waves 20] [--processes 4]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import platform
import time
from multiprocessing.connection import Connection
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier as BarrierType

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


def client(port: int, callers: int, waves: int, barrier: BarrierType, results: Queue[tuple[int, list[float]]]) -> None:
    """One client process: ``callers`` concurrent calls per wave, every wave started with the other processes'."""

    async def run() -> tuple[int, list[float]]:
        rejected: list[float] = []
        served = 0
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = gateway_pb2_grpc.GatewayServiceStub(channel)
            await channel.channel_ready()

            async def call(record: bool) -> None:
                nonlocal served
                started = time.perf_counter()
                try:
                    await stub.DeleteUser(pb.DeleteUserRequest(user_id="u"), timeout=5)
                    served += record
                except grpc.aio.AioRpcError as error:
                    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
                    if record:
                        rejected.append((time.perf_counter() - started) * 1000)

            for wave in range(waves + 1):  # wave 0 warms the channel up and is not counted
                await asyncio.to_thread(barrier.wait)
                await asyncio.gather(*(call(wave > 0) for _ in range(callers)))
                await asyncio.to_thread(barrier.wait)
        return served, rejected

    results.put(asyncio.run(run()))


def main(bound: int, waves: int, processes: int) -> None:
    ours, theirs = multiprocessing.Pipe()
    server = multiprocessing.Process(target=serve, args=(bound, theirs))
    server.start()
    port = ours.recv()
    callers = [4 * bound // processes + (1 if n < 4 * bound % processes else 0) for n in range(processes)]
    barrier = multiprocessing.Barrier(processes + 1)
    results: Queue[tuple[int, list[float]]] = multiprocessing.Queue()
    clients = [multiprocessing.Process(target=client, args=(port, share, waves, barrier, results)) for share in callers]
    for process in clients:
        process.start()
    rss: list[float] = []
    for wave in range(waves + 1):
        barrier.wait()  # the wave starts
        barrier.wait()  # every caller has its answer
        if wave > 0:
            rss.append(rss_mb(server.pid or 0))
    outcomes = [results.get() for _ in clients]
    for process in clients:
        process.join()
    ours.send("stop")
    server.join()
    served = sum(n for n, _ in outcomes)
    rejected = sorted(ms for _, times in outcomes for ms in times)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}")
    print(
        "| bound | client processes | callers | calls | served | rejected | rejection p50 ms | p99 ms | max ms "
        "| server RSS first/last wave MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")

    def p(q: float) -> float:
        return rejected[min(len(rejected) - 1, int(q * len(rejected)))]

    print(
        f"| {bound} | {processes} | {4 * bound} | {4 * bound * waves} | {served} | {len(rejected)} | {p(0.5):.2f} "
        f"| {p(0.99):.2f} | {rejected[-1]:.2f} | {rss[0]:.0f} / {rss[-1]:.0f} |"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bound", type=int, default=16)
    parser.add_argument("--waves", type=int, default=20)
    parser.add_argument(
        "--processes", type=int, default=4, help="client processes the callers are spread over (callers in many pods)"
    )
    args = parser.parse_args()
    main(args.bound, args.waves, args.processes)
