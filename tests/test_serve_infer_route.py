"""The direct infer route (``InferRoute``) answers exactly as the framework's route would.

Both apps run in this process on one model, driven through ASGI with the same
messages: every answer (status, headers, body), the metrics it counts and the
draining of a body it refuses early must be the same on the direct path as on
the framework's router, which serves every other path.
"""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from helpers.models import linear_model

from mnist_edge.runtime.classifier import Classifier
from mnist_edge.runtime.serve.app import create_app
from mnist_edge.runtime.serve.service import ModelService, ServeConfig

LIMIT = 64 * 1024


def json_body(x: np.ndarray, name: str = "image", **extra: Any) -> bytes:
    entry = {"name": name, "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}
    return json.dumps({"inputs": [entry], **extra}).encode()


def binary_body(x: np.ndarray) -> tuple[bytes, int]:
    entry = {"name": "image", "shape": list(x.shape), "datatype": "FP32",
             "parameters": {"binary_data_size": x.nbytes}}  # fmt: skip
    header = json.dumps(
        {
            "inputs": [entry],
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
        }
    ).encode()
    return header + x.astype("<f4").tobytes(), len(header)


X = np.random.default_rng(3).random((2, 1, 28, 28), dtype=np.float32)
BINARY, HEADER = binary_body(X)
# (path, headers, body chunks); the paths the direct route takes and some it leaves to the router
CASES = {
    "json": ("/v2/models/mnist/infer", [], [json_body(X, id="a-1")]),
    "json in chunks": ("/v2/models/mnist/infer", [], [json_body(X)[:1000], json_body(X)[1000:]]),
    "binary": ("/v2/models/mnist/infer", [(b"inference-header-content-length", b"%d" % HEADER)], [BINARY]),
    "version path": ("/v2/models/mnist/versions/1/infer", [], [json_body(X)]),
    "unknown version": ("/v2/models/mnist/versions/2/infer", [], [json_body(X)]),
    "unknown model": ("/v2/models/resnet/infer", [], [json_body(X)]),
    "malformed": ("/v2/models/mnist/infer", [], [b'{"inputs": [']),
    "wrong input": ("/v2/models/mnist/infer", [], [json_body(X, name="pixels")]),
    "NaN": ("/v2/models/mnist/infer", [], [json_body(np.full((1, 1, 28, 28), np.nan, np.float32))]),
    "gzip": ("/v2/models/mnist/infer", [(b"content-encoding", b"gzip")], [gzip.compress(json_body(X))]),
    "declared over the limit": (
        "/v2/models/mnist/infer", [(b"content-length", b"%d" % (LIMIT + 1))], [b"x" * 4096] * 17,
    ),
    "chunks over the limit": ("/v2/models/mnist/infer", [], [b"x" * 4096] * 17),
    "empty": ("/v2/models/mnist/infer", [], [b""]),
}  # fmt: skip


class Exchange:
    """One request through an ASGI app: what it sent back and how much of the body it read."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.read = 0
        self.messages: list[dict[str, Any]] = []

    async def receive(self) -> dict[str, Any]:
        if self.read == len(self.chunks):
            await asyncio.sleep(3600)  # a real client would be waiting for the answer
        self.read += 1
        return {
            "type": "http.request",
            "body": self.chunks[self.read - 1],
            "more_body": self.read < len(self.chunks),
        }

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            assert self.read == len(self.chunks), "answered before the body was read to its end"
        self.messages.append(message)

    def answer(self) -> tuple[int, dict[bytes, bytes], bytes]:
        start, *bodies = self.messages
        headers = dict(start["headers"])
        return start["status"], headers, b"".join(m.get("body", b"") for m in bodies)


async def _run(
    app: Any, path: str, headers: list[tuple[bytes, bytes]], chunks: list[bytes]
) -> Exchange:
    exchange = Exchange(chunks)
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "headers": [(b"host", b"test"), *headers], "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }  # fmt: skip
    await asyncio.wait_for(app(scope, exchange.receive, exchange.send), 30)
    return exchange


@pytest.fixture(scope="module")
def answers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Every case on both apps: (direct answer, framework answer) and both apps' metrics."""
    model = linear_model(tmp_path_factory.mktemp("route") / "linear.onnx")
    config = ServeConfig(max_body_bytes=LIMIT)
    apps = {
        direct: create_app(ModelService(Classifier(model), config), direct_infer=direct)
        for direct in (True, False)
    }

    async def both() -> dict[str, Any]:
        out: dict[str, Any] = {}
        for direct, app in apps.items():
            async with app.router.lifespan_context(app):
                for name, (path, headers, chunks) in CASES.items():
                    out[name, direct] = (await _run(app, path, headers, chunks)).answer()
                out["metrics", direct] = app.state.service.metrics.render()
        return out

    yield asyncio.run(both())


@pytest.mark.parametrize("case", list(CASES))
def test_direct_route_answers_as_the_framework_route(answers: dict[str, Any], case: str) -> None:
    direct, framework = answers[case, True], answers[case, False]
    assert direct[0] == framework[0]
    assert direct[2] == framework[2]
    wanted = (b"content-type", b"content-length", b"inference-header-content-length")
    assert {k: v for k, v in direct[1].items() if k in wanted} == {
        k: v for k, v in framework[1].items() if k in wanted
    }


def test_the_cases_cover_answers_and_refusals(answers: dict[str, Any]) -> None:
    statuses = {case: answers[case, True][0] for case in CASES}
    assert statuses["json"] == statuses["binary"] == statuses["version path"] == 200
    assert statuses["unknown version"] == statuses["unknown model"] == 404
    assert statuses["gzip"] == 415
    assert statuses["declared over the limit"] == statuses["chunks over the limit"] == 413
    assert statuses["malformed"] == statuses["NaN"] == statuses["empty"] == 400
    assert json.loads(answers["json", True][2])["id"] == "a-1"


def test_direct_route_counts_the_same_metrics(answers: dict[str, Any]) -> None:
    def requests(text: bytes) -> list[str]:
        return sorted(
            line for line in text.decode().splitlines()
            if line.startswith("mnist_serve_requests_total") or line.startswith("mnist_inference_count_total")
        )  # fmt: skip

    counted = requests(answers["metrics", True])
    assert counted == requests(answers["metrics", False])
    assert any('endpoint="infer"' in line and 'status="413"' in line for line in counted)
