"""The pixels-in model (preprocessing inside the graph) through the Classifier and ``mnist-serve``.

The model is built in code: a linear core (opset 18) wrapped by
:func:`mnist_edge.export.pixels.build_pixels_model`, as ``make export`` wraps the
trained net. Answers are compared with ONNX Runtime on the same file, exactly.
"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from click.testing import CliRunner
from helpers.models import linear_model, pixels_model
from helpers.serve_process import ServerProcess, serving
from PIL import Image

from mnist_edge.runtime.classifier import Classifier
from mnist_edge.runtime.serve.cli import main as mnist_serve
from mnist_edge.runtime.session import ModelError

pytestmark = pytest.mark.timeout(120)


def picture(
    seed: int, shape: tuple[int, int] = (60, 45), dark_on_light: bool = False
) -> np.ndarray:
    """A picture as a user would send it: any size, a stroke of ink somewhere."""
    rng = np.random.default_rng(seed)
    img = np.zeros(shape, np.uint8)
    h, w = shape
    y, x = rng.integers(0, h // 3 + 1), rng.integers(0, w // 3 + 1)
    img[y : y + max(h // 2, 1), x : x + 4] = 255
    img[y : y + 2, x : x + max(w // 2, 1)] = 180
    return 255 - img if dark_on_light else img


def png(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pixels_model(tmp_path_factory.mktemp("pixels") / "mnist.pixels.onnx")


@pytest.fixture(scope="module")
def session(model: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def server(model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with serving(model, tmp_path_factory.mktemp("pixels-log")) as proc:
        yield proc


# ---------------------------------------------------------------- the library piece


def test_classifier_runs_a_pixels_in_model_one_picture_at_a_time(
    model: Path, session: ort.InferenceSession
) -> None:
    clf = Classifier(model, provider="cpu")
    assert clf.pixels_in and clf.classes == tuple(str(i) for i in range(10))
    for seed, shape, dark in [(0, (60, 45), False), (1, (28, 28), True), (2, (5, 300), False)]:
        pic = picture(seed, shape, dark)
        probabilities, label = session.run(None, {"pixels": pic})
        got = clf.classify_picture(pic)
        np.testing.assert_array_equal(got.probabilities, probabilities[None])
        assert got.indices.tolist() == [int(label)]


def test_classifier_refuses_mixing_the_two_kinds(model: Path, tmp_path: Path) -> None:
    pixels = Classifier(model, provider="cpu")
    with pytest.raises(ModelError, match=r"is a pixels-in model .* use classify_picture"):
        pixels.predict(np.zeros((1, 28, 28), np.uint8))
    with pytest.raises(ValueError, match=r"non-empty uint8 \(H, W\) grayscale array, got float32"):
        pixels.classify_picture(np.zeros((28, 28), np.float32))
    with pytest.raises(ValueError, match=r"got uint8 \(0, 5\)"):
        pixels.classify_picture(np.zeros((0, 5), np.uint8))
    digits = Classifier(linear_model(tmp_path / "linear.onnx"), provider="cpu")
    assert not digits.pixels_in
    with pytest.raises(ModelError, match="takes preprocessed digits, not pictures"):
        digits.classify_picture(np.zeros((28, 28), np.uint8))


# ---------------------------------------------------------------- served


def test_metadata_says_which_kind_of_model(server: ServerProcess) -> None:
    client = thttp.InferenceServerClient(server.url)
    meta = client.get_model_metadata("mnist")
    client.close()
    assert meta["inputs"] == [{"name": "pixels", "datatype": "UINT8", "shape": [-1, -1]}]
    assert meta["outputs"] == [
        {"name": "probabilities", "datatype": "FP32", "shape": [10]},
        {"name": "label", "datatype": "INT64", "shape": []},
    ]
    assert meta["parameters"]["kind"] == "pixels-in"
    assert json.loads(meta["parameters"]["preprocessing"])["where"] == "graph"
    assert meta["parameters"]["model_version"] == "1.0+test"


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_takes_a_uint8_picture_over_http(
    server: ServerProcess, session: ort.InferenceSession, binary: bool
) -> None:
    pic = picture(3, (50, 33))
    client = thttp.InferenceServerClient(server.url)
    tensor = thttp.InferInput("pixels", [50, 33], "UINT8")
    tensor.set_data_from_numpy(pic, binary_data=binary)
    outputs = [
        thttp.InferRequestedOutput(n, binary_data=binary) for n in ("probabilities", "label")
    ]
    result = client.infer("mnist", [tensor], outputs=outputs)
    client.close()
    probabilities, label = session.run(None, {"pixels": pic})
    np.testing.assert_array_equal(result.as_numpy("probabilities"), probabilities)
    assert result.as_numpy("label").shape == () and int(result.as_numpy("label")) == int(label)


def test_infer_takes_a_uint8_picture_over_grpc(
    server: ServerProcess, session: ort.InferenceSession
) -> None:
    pic = picture(4, (31, 77), dark_on_light=True)
    client = tgrpc.InferenceServerClient(server.grpc_url)
    tensor = tgrpc.InferInput("pixels", [31, 77], "UINT8")
    tensor.set_data_from_numpy(pic)
    result = client.infer("mnist", [tensor])
    client.close()
    probabilities, label = session.run(None, {"pixels": pic})
    np.testing.assert_array_equal(result.as_numpy("probabilities"), probabilities)
    assert int(result.as_numpy("label")) == int(label)


def test_a_batch_shaped_input_is_refused_with_the_model_s_shape(server: ServerProcess) -> None:
    client = thttp.InferenceServerClient(server.url)
    tensor = thttp.InferInput("pixels", [1, 28, 28], "UINT8")
    tensor.set_data_from_numpy(np.zeros((1, 28, 28), np.uint8))
    with pytest.raises(Exception, match=r"the model takes \[H, W\] \(H, W >= 1: one picture\)"):
        client.infer("mnist", [tensor])
    client.close()


def test_classify_hands_the_decoded_pixels_to_the_graph(
    server: ServerProcess, session: ort.InferenceSession
) -> None:
    pictures = [
        picture(10 + i, (40 + 7 * i, 30 + 5 * i), dark_on_light=i % 2 == 1) for i in range(5)
    ]
    boundary = uuid.uuid4().hex
    parts = [
        (
            f"--{boundary}\r\nContent-Disposition: form-data; name=file; filename=p{i}.png\r\n"
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + png(p)
        + b"\r\n"
        for i, p in enumerate(pictures)
    ]
    parts.append(
        f"--{boundary}\r\nContent-Disposition: form-data; name=file; filename=junk.png\r\n\r\n".encode()
        + b"not a picture\r\n"
    )
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    conn = server.connection()
    conn.request(
        "POST",
        "/v1/classify?top_k=2",
        body,
        {"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    response = conn.getresponse()
    payload = json.loads(response.read())
    conn.close()
    assert response.status == 422 and payload["error"].startswith(
        "1 of 6 pictures could not be used"
    )
    for record, pic in zip(payload["results"], pictures, strict=False):
        probabilities, label = session.run(None, {"pixels": pic})
        assert record["label"] == str(int(label))
        assert record["confidence"] == float(probabilities.max())
        assert len(record["top_k"]) == 2
    assert payload["results"][-1]["error"] == "not an image (unknown or unsupported file format)"


def test_invert_is_refused_for_a_pixels_in_model(model: Path) -> None:
    result = CliRunner().invoke(
        mnist_serve, ["--model", str(model), "--port", "0", "--no-grpc", "--invert", "always"]
    )
    assert result.exit_code == 2, result.output
    assert "--invert" in result.output and "inverts inside its graph" in result.output
