"""Tiny ONNX models built in code for the runtime tests (no torch, no training).

``linear_model`` maps a 28x28 image to softmax(flatten(image) @ W) with a fixed
random W, so its predictions depend on every pixel and are easy to recompute.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mnist_edge.runtime.metadata import ModelMetadata, Preprocessing

DEFAULT_METADATA = ModelMetadata()
WEIGHTS = np.random.default_rng(1234).standard_normal((784, 10)).astype(np.float32) * 0.05


def linear_model(
    path: Path,
    *,
    metadata: ModelMetadata | None = DEFAULT_METADATA,
    input_dtype: str = "float32",
    batch: int | str = "batch",
) -> Path:
    """Write the linear test model to ``path``; returns ``path``.

    Args:
        metadata: written into metadata_props; ``None`` writes none (a foreign model).
        input_dtype: ``"float32"`` input (N, 1, 28, 28) in [0, 1], or ``"uint8"`` (N, 28, 28) pixels.
        batch: the batch dimension: ``"batch"`` (dynamic) or a fixed size.
    """
    if input_dtype == "uint8":
        inp = helper.make_tensor_value_info("image", TensorProto.UINT8, [batch, 28, 28])
        nodes = [
            helper.make_node("Cast", ["image"], ["f32"], to=TensorProto.FLOAT),
            helper.make_node("Div", ["f32", "scale"], ["scaled"]),
            helper.make_node("Flatten", ["scaled"], ["flat"], axis=1),
        ]
        inits = [numpy_helper.from_array(np.array(255.0, np.float32), "scale")]
    else:
        inp = helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, 1, 28, 28])
        nodes = [helper.make_node("Flatten", ["image"], ["flat"], axis=1)]
        inits = []
    nodes += [
        helper.make_node("MatMul", ["flat", "W"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    out = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [batch, 10])
    graph = helper.make_graph(
        nodes, "linear", [inp], [out], [*inits, numpy_helper.from_array(WEIGHTS, "W")]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    if metadata is not None:
        if input_dtype == "uint8":
            metadata = ModelMetadata(
                labels=metadata.labels, preprocessing=Preprocessing(input_dtype="uint8")
            )
        helper.set_model_props(model, metadata.to_props())
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def expected_probabilities(images: np.ndarray) -> np.ndarray:
    """What :func:`linear_model` computes for uint8 (N, 28, 28) images -> (N, 10), in float64."""
    x = images.reshape(len(images), -1).astype(np.float64) / 255.0
    logits = x @ WEIGHTS.astype(np.float64)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def digit(seed: int = 0) -> np.ndarray:
    """A synthetic MNIST-style digit: uint8 (28, 28), white strokes on black inside the 20x20 centre."""
    rng = np.random.default_rng(seed)
    img = np.zeros((28, 28), dtype=np.uint8)
    y0, x0 = 4 + rng.integers(0, 3), 6 + rng.integers(0, 4)
    img[y0 : y0 + 20, x0 : x0 + 3] = 255  # a vertical stroke
    img[y0 : y0 + 3, x0 : x0 + 12] = 200  # and a bar
    img[y0 + 8 : y0 + 10, x0 + 2 : x0 + 10] = rng.integers(60, 255)
    return img


def linear_core(metadata: ModelMetadata, sharpness: float = 1.0) -> onnx.ModelProto:
    """The core a pixels-in model wraps, at opset 18: image (batch, 1, 28, 28) -> softmax(flatten @ W).

    Args:
        metadata: written into metadata_props.
        sharpness: W is scaled by it (larger: clearer labels).
    """
    nodes = [
        helper.make_node("Flatten", ["image"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "W"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "linear",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, 28, 28])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 10])],
        [numpy_helper.from_array(WEIGHTS * np.float32(sharpness), "W")],
    )
    core = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    core.ir_version = 8
    helper.set_model_props(core, metadata.to_props())
    return core


def pixels_model(path: Path) -> Path:
    """Write a pixels-in model around a sharp linear core (uint8 [height, width] -> probabilities [10], label [])."""
    from mnist_edge.export.pixels import build_pixels_model  # export's graph builder

    core = linear_core(ModelMetadata(model_version="1.0+test"), sharpness=20)
    onnx.save(build_pixels_model(core, Preprocessing()), path)
    return path
