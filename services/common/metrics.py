"""Prometheus metrics: the HTTP endpoint every service serves, the per-RPC metrics of the bootstrap's server
interceptor, and the domain metrics (embedding and ranker batches, retriever index and searches, model versions).

One process runs one service, so metrics live in the process-wide default registry (which also carries the
process and GC collectors). Each family is created once per process, on first use, by the service that owns it,
so a service's /metrics shows its own families and no empty ones of the others. Every name is documented in
docs/operations.md ("Metrics").
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import cache
from wsgiref.simple_server import WSGIServer

import structlog
from prometheus_client import Counter, Gauge, Histogram, Info, disable_created_metrics, start_http_server

from services.common.batching import BatchStats

log = structlog.get_logger(__name__)

# No `<name>_created` series beside every counter and histogram: they double the series and nobody queries them.
disable_created_metrics()  # type: ignore[no-untyped-call]

# Seconds: a loopback hop is ~0.4 ms, a Recommend tens of ms, a large embedding batch seconds.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


@dataclass(frozen=True)
class RpcMetrics:
    requests: Counter
    latency: Histogram
    in_flight: Gauge


@cache
def rpc_metrics() -> RpcMetrics:
    labels = ("grpc_service", "grpc_method")
    return RpcMetrics(
        requests=Counter(
            "recsys_grpc_server_requests",
            "Finished unary RPCs by method and status code.",
            (*labels, "grpc_code"),
        ),
        latency=Histogram(
            "recsys_grpc_server_request_seconds",
            "Time from receiving an RPC to its status, by method and status code.",
            (*labels, "grpc_code"),
            buckets=LATENCY_BUCKETS,
        ),
        in_flight=Gauge("recsys_grpc_server_in_flight_requests", "RPCs being served now, by method.", labels),
    )


class MetricsServer:
    """The /metrics HTTP endpoint on its own thread (Prometheus scrapes it; the gRPC port stays gRPC only)."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.requested_port = port
        self.port = 0
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> int:
        """Starts serving; returns the port, or 0 when the port is in use. A metrics port clash is logged, not
        fatal: serving requests matters more than being scraped, and Prometheus reports the target as down."""
        try:
            self._server, self._thread = start_http_server(self.requested_port, self.host)
        except OSError as error:
            log.error("metrics endpoint not started", port=self.requested_port, error=str(error))
            return 0
        self.port = int(self._server.server_port)
        return self.port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


class EmbeddingMetrics:
    """Micro-batches of the encoder and the loaded model."""

    def __init__(self) -> None:
        self.batch_size = Histogram(
            "recsys_embedding_batch_size", "Texts per forward pass of the encoder.", buckets=SIZE_BUCKETS
        )
        self.queue_wait = Histogram(
            "recsys_embedding_queue_wait_seconds",
            "Time the oldest request of a batch waited before its forward pass started.",
            buckets=LATENCY_BUCKETS,
        )
        self.batch_seconds = Histogram(
            "recsys_embedding_batch_seconds", "Time of one forward pass (tokenise + encode).", buckets=LATENCY_BUCKETS
        )
        self.model = Info("recsys_embedding_model", "The loaded encoder: model id, dimension, device, dtype.")

    def observe_batch(self, stats: BatchStats) -> None:
        self.batch_size.observe(stats.size)
        self.queue_wait.observe(stats.queue_wait_s)
        self.batch_seconds.observe(stats.run_s)

    def model_loaded(self, model_id: str, dimension: int, device: str, dtype: str) -> None:
        self.model.info({"model_id": model_id, "dimension": str(dimension), "device": device, "dtype": dtype})


class RankerMetrics:
    """Scoring batches and the served checkpoint; implements the ranker's ScoringObserver."""

    def __init__(self) -> None:
        self.batch_tasks = Histogram(
            "recsys_ranker_batch_tasks", "Users scored in one ScoreCandidates call.", buckets=SIZE_BUCKETS
        )
        self.batch_candidates = Histogram(
            "recsys_ranker_batch_candidates", "Candidates scored in one ScoreCandidates call.", buckets=SIZE_BUCKETS
        )
        self.queue_wait = Histogram(
            "recsys_ranker_queue_wait_seconds",
            "Time a scoring call waited for the model thread.",
            buckets=LATENCY_BUCKETS,
        )
        self.score_seconds = Histogram(
            "recsys_ranker_score_seconds", "Time of the model's forward pass for one call.", buckets=LATENCY_BUCKETS
        )
        self.model = Info("recsys_ranker_model", "The checkpoint being served: version and folder.")
        self.reloads = Counter("recsys_ranker_model_loads", "Checkpoints loaded (start-up and hot reloads).")

    def scored(self, tasks: int, candidates: int, queue_wait_s: float, run_s: float) -> None:
        self.batch_tasks.observe(tasks)
        self.batch_candidates.observe(candidates)
        self.queue_wait.observe(queue_wait_s)
        self.score_seconds.observe(run_s)

    def model_loaded(self, version: str, path: str) -> None:
        self.model.info({"version": version, "path": path})
        self.reloads.inc()


class RetrieverMetrics:
    """Collection size and engine latency; implements the retriever's RetrievalObserver."""

    def __init__(self) -> None:
        self.items = Gauge("recsys_retriever_items", "Items in the collection (as of the last item write).")
        self.indexed = Gauge("recsys_retriever_indexed_vectors", "Item vectors covered by the HNSW index.")
        self.search_seconds = Histogram(
            "recsys_retriever_search_seconds",
            "Time of one engine query call (thread hand-off included), by operation.",
            ("operation",),
            buckets=LATENCY_BUCKETS,
        )

    def searched(self, operation: str, seconds: float) -> None:
        self.search_seconds.labels(operation).observe(seconds)

    def sized(self, items: int, indexed_vectors: int) -> None:
        self.items.set(items)
        self.indexed.set(indexed_vectors)


# One instance per process: a second registration of the same names would be refused by the registry.
embedding_metrics = cache(EmbeddingMetrics)
ranker_metrics = cache(RankerMetrics)
retriever_metrics = cache(RetrieverMetrics)
