"""Prometheus metrics for ``GET /metrics``: requests per protocol, the batcher's work.

Names follow Triton's ``nv_inference_*`` family under the ``mnist_`` prefix, as
histograms where Triton keeps cumulative microseconds:

======================================================  ==========================================
metric                                                  what
======================================================  ==========================================
``mnist_serve_requests_total{protocol,endpoint,status}``  answers: ``http``/``grpc``, the route's
                                                        name (``infer``, ``classify``, ...), the
                                                        HTTP status or gRPC code name
``mnist_serve_request_duration_seconds{protocol,endpoint}``  time to answer
``mnist_inference_request_success_total{model,version}``  requests the model answered
``mnist_inference_request_failure_total{model,version}``  requests whose model call failed
``mnist_inference_count_total{model,version}``          images through the model
``mnist_inference_exec_count_total{model,version}``     model calls
``mnist_inference_queue_duration_seconds{model,version}``  a request's wait before its batch ran
``mnist_inference_compute_duration_seconds{model,version}``  one batch's model time
``mnist_inference_batch_size{model,version}``           images per batch
======================================================  ==========================================

Each :class:`ServeMetrics` has its own registry (two servers in one process do
not mix). Label children are cached: a request costs a few dict look-ups.
"""

from __future__ import annotations

import re

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest

CONTENT_TYPE = CONTENT_TYPE_LATEST
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)

_MODEL_ROUTE = re.compile(r"^/v2/models/[^/]+(?:/versions/[^/]+)?(/ready|/stats|/infer)?$")
_ROUTES = {
    "/v2": "server_metadata",
    "/v2/health/live": "live",
    "/v2/health/ready": "ready",
    "/v2/models/stats": "statistics",
    "/v1/classify": "classify",
    "/metrics": "metrics",
}
_MODEL_ROUTES = {
    None: "model_metadata",
    "/ready": "model_ready",
    "/stats": "statistics",
    "/infer": "infer",
}


def http_endpoint(path: str) -> str:
    """The endpoint name of an HTTP path (``other`` for any path no route serves)."""
    name = _ROUTES.get(path)
    if name is not None:
        return name
    match = _MODEL_ROUTE.match(path)
    return _MODEL_ROUTES[match.group(1)] if match else "other"


class ServeMetrics:
    """The server's metrics; implements :class:`~.batcher.BatchObserver`.

    Args:
        model_name, model_version: the ``model`` and ``version`` labels.
    """

    def __init__(self, model_name: str, model_version: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        model = ("model", "version")
        self._requests = Counter(
            "mnist_serve_requests",
            "Requests answered, by protocol, endpoint and status.",
            ("protocol", "endpoint", "status"),
            registry=r,
        )
        self._duration = Histogram(
            "mnist_serve_request_duration_seconds",
            "Time to answer a request, by protocol and endpoint.",
            ("protocol", "endpoint"),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        labels = (model_name, model_version)
        self._success = Counter(
            "mnist_inference_request_success",
            "Requests the model answered.",
            model,
            registry=r,
        ).labels(*labels)
        self._failure = Counter(
            "mnist_inference_request_failure",
            "Requests whose model call failed.",
            model,
            registry=r,
        ).labels(*labels)
        self._images = Counter(
            "mnist_inference_count", "Images through the model.", model, registry=r
        ).labels(*labels)
        self._calls = Counter(
            "mnist_inference_exec_count", "Model calls.", model, registry=r
        ).labels(*labels)
        self._queue = Histogram(
            "mnist_inference_queue_duration_seconds",
            "A request's wait in the batcher before its batch ran.",
            model,
            buckets=LATENCY_BUCKETS,
            registry=r,
        ).labels(*labels)
        self._compute = Histogram(
            "mnist_inference_compute_duration_seconds",
            "Model time of one batch.",
            model,
            buckets=LATENCY_BUCKETS,
            registry=r,
        ).labels(*labels)
        self._batch = Histogram(
            "mnist_inference_batch_size",
            "Images per batch.",
            model,
            buckets=BATCH_BUCKETS,
            registry=r,
        ).labels(*labels)
        self._children: dict[tuple[str, str, str], tuple[Counter, Histogram]] = {}

    def request(self, protocol: str, endpoint: str, status: str, seconds: float) -> None:
        """Count one answered request."""
        key = (protocol, endpoint, status)
        child = self._children.get(key)
        if child is None:
            child = (
                self._requests.labels(protocol, endpoint, status),
                self._duration.labels(protocol, endpoint),
            )
            self._children[key] = child
        child[0].inc()
        child[1].observe(seconds)

    def batch_done(self, rows: int, calls: int, seconds: float) -> None:
        self._calls.inc(calls)
        self._compute.observe(seconds)
        self._batch.observe(rows)

    def request_done(self, rows: int, queue_seconds: float, ok: bool) -> None:
        self._queue.observe(queue_seconds)
        if ok:
            self._success.inc()
            self._images.inc(rows)
        else:
            self._failure.inc()

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric (serve with :data:`CONTENT_TYPE`)."""
        return generate_latest(self.registry)
