"""The Open Inference Protocol (KServe v2 REST) wire format: infer requests in, responses out.

Pure functions of bytes and numpy arrays (no web framework), so the rules are
tested without a server. Two request encodings, both from the protocol:

* JSON: ``{"inputs": [{"name", "shape", "datatype", "data"}], "outputs": [{"name"}]}``
  with ``data`` a flat or nested list of numbers.
* The binary tensor data extension (Triton's; ``tritonclient``'s default): an
  ``Inference-Header-Content-Length: N`` header, the first N body bytes are the
  JSON header, and each input with ``"parameters": {"binary_data_size": k}``
  takes the next k raw little-endian bytes. Outputs come back the same way when
  asked (``"parameters": {"binary_data": true}`` on an output, or
  ``"binary_data_output": true`` on the request).

Every problem is a :class:`ProtocolError` carrying the HTTP status to answer with;
its message goes to the client as ``{"error": "..."}``.

Hostile bodies are refused before the JSON parser sees them: nesting deeper
than :data:`MAX_JSON_DEPTH` (400) and more values than the request could need
(413) are counted on the raw bytes. ``NaN`` and ``Infinity`` are refused in
JSON and in floating-point tensors (400): the models take pixels scaled to
[0, 1], and a non-finite pixel has no meaning to clip to.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from mnist_edge.runtime.errors import MnistEdgeError

HEADER_LENGTH = "Inference-Header-Content-Length"

# Protocol datatype <-> numpy dtype (the protocol's fixed-size numeric types).
DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
KNOWN_DATATYPES = (*DATATYPES, "BYTES", "BF16")

# Deepest JSON nesting a request may have: a tensor nested per dimension sits at
# depth 7 ({"inputs": [{"data": [[[[...]]]]}]}); the parser's recursion is far deeper.
MAX_JSON_DEPTH = 32
# Values a JSON body may hold beyond its tensor's (ids, shapes, parameters).
_JSON_SLACK_VALUES = 1024
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_DEPTH_CHUNK = 1 << 20


class ProtocolError(MnistEdgeError, ValueError):
    """A request the protocol (or this model) cannot take; ``status`` is the HTTP answer."""

    status: int = 400

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


def datatype_of(dtype: np.dtype[Any] | type) -> str:
    """numpy dtype -> protocol datatype (``float32`` -> ``FP32``).

    Raises:
        ValueError: a dtype the protocol has no fixed-size type for.
    """
    dtype = np.dtype(dtype)
    for name, known in DATATYPES.items():
        if known == dtype:
            return name
    raise ValueError(f"dtype {dtype} has no Open Inference Protocol datatype")


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output as the protocol describes it.

    Attributes:
        name: the tensor name.
        datatype: protocol datatype (``FP32``, ``UINT8``, ...).
        shape: dimensions; -1 marks one of any size >= 1.
        batched: the first dimension is the batch (rows, limited per request);
            ``False`` for the pixels-in model's one picture ``[height, width]``.
    """

    name: str
    datatype: str
    shape: tuple[int, ...]
    batched: bool = True

    @property
    def dtype(self) -> np.dtype[Any]:
        return DATATYPES[self.datatype]

    def metadata(self) -> dict[str, Any]:
        """The protocol's tensor metadata: ``{"name", "datatype", "shape"}``."""
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class RequestedOutput:
    """An output the client asked for, and whether it wants it as raw bytes."""

    name: str
    binary: bool


@dataclass(frozen=True)
class InferRequest:
    """A checked infer request for a one-input model.

    Attributes:
        id: the client's request id, echoed in the response ("" if none).
        tensor: the input, already the spec's dtype and shape (rows, ...).
        outputs: what to send back, in order.
    """

    id: str
    tensor: np.ndarray
    outputs: tuple[RequestedOutput, ...]


def _json_depth_over(skeleton: bytes, limit: int) -> bool:
    """Whether brackets nest deeper than ``limit`` in ``skeleton`` (JSON with strings blanked)."""
    if skeleton.count(b"[") + skeleton.count(b"{") <= limit:
        return False  # the common case: too few brackets to nest that deep
    depth = 0
    for start in range(0, len(skeleton), _DEPTH_CHUNK):  # bounded temporary memory
        a = np.frombuffer(skeleton, np.uint8, min(_DEPTH_CHUNK, len(skeleton) - start), start)
        step = ((a == 0x5B) | (a == 0x7B)).astype(np.int32) - ((a == 0x5D) | (a == 0x7D))
        running = np.cumsum(step) + depth
        if running.max() > limit:
            return True
        depth = int(running[-1])
    return False


def _refuse_constant(name: str) -> float:
    raise ProtocolError(
        f"{name} is not a number a request may carry; send finite numbers "
        "(pixels scaled to [0, 1] for FP32 models)"
    )


def _json_object(data: bytes, what: str, max_values: int) -> dict[str, Any]:
    """Parse a JSON object after bounding its nesting and its count of values on the raw bytes."""
    bound = max_values + _JSON_SLACK_VALUES
    # brackets and commas inside strings only add to the raw bytes' counts, so when those
    # are within the bounds the strings need not be blanked (the common case)
    if data.count(b"[") + data.count(b"{") > MAX_JSON_DEPTH or len(data) + 1 > bound:
        skeleton = _JSON_STRING.sub(b'""', data)
        if _json_depth_over(skeleton, MAX_JSON_DEPTH):
            raise ProtocolError(
                f"{what} nests deeper than {MAX_JSON_DEPTH} levels; "
                "send each tensor's 'data' as a flat list of numbers"
            )
        # values are one more than the commas, and there are no more commas than bytes
        if len(skeleton) + 1 > bound and (values := skeleton.count(b",") + 1) > bound:
            raise ProtocolError(
                f"{what} holds about {values} values, more than the model's input allows per "
                f"request ({max_values}); send fewer images per request",
                status=413,
            )
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        # orjson is the fast path; what it refuses goes to the stdlib parser, which gives
        # the error messages (and reads what only it takes, such as integers beyond 64 bits)
        value = _stdlib_json(data, what)
    if not isinstance(value, dict):
        raise ProtocolError(f"{what} must be a JSON object, not {type(value).__name__}")
    return value


def _stdlib_json(data: bytes, what: str) -> Any:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(f"{what} is not UTF-8 text") from None
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except ProtocolError:
        raise
    except RecursionError:  # a last guard: the depth check above should have caught it
        raise ProtocolError(f"{what} nests too deeply") from None
    except ValueError as exc:
        hint = ""
        if what == "request body" and "Extra data" in str(exc):
            hint = f"; binary tensor data needs the {HEADER_LENGTH} header"
        raise ProtocolError(f"{what} is not valid JSON ({exc}){hint}") from None
    return value


def _parameters(obj: dict[str, Any], where: str) -> dict[str, Any]:
    params = obj.get("parameters", {})
    if not isinstance(params, dict):
        raise ProtocolError(f"{where} 'parameters' must be an object")
    return params


def check_datatype(datatype: Any, spec: TensorSpec) -> None:
    """Raises :class:`ProtocolError` (400) unless ``datatype`` is the input's."""
    if datatype != spec.datatype:
        known = "" if datatype in KNOWN_DATATYPES else " (not a protocol datatype)"
        raise ProtocolError(
            f"input {spec.name!r} has datatype {datatype!r}{known}; the model takes {spec.datatype}"
        )


def check_shape(shape: Any, spec: TensorSpec, max_rows: int, max_values: int) -> tuple[int, ...]:
    """A request's shape for ``spec``, checked: rank, fixed sizes, rows and values per request.

    Raises:
        ProtocolError: not a list of integers or does not fit (400); more rows than
            ``max_rows`` or values than ``max_values`` (413).
    """
    name = spec.name
    if (
        not isinstance(shape, list)
        or not shape
        or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
    ):
        raise ProtocolError(f"input {name!r}: 'shape' must be a list of integers, not {shape!r}")
    if spec.batched:
        want = [("N" if d < 0 else str(d)) for d in spec.shape]
        sizes = "N >= 1"
    else:
        want = [("H", "W")[i] if d < 0 and i < 2 else str(d) for i, d in enumerate(spec.shape)]
        sizes = "H, W >= 1: one picture"
    fits = len(shape) == len(spec.shape) and all(
        d == w or (w < 0 and d >= 1) for d, w in zip(shape, spec.shape, strict=False)
    )
    if not fits:
        raise ProtocolError(
            f"input {name!r} has shape {shape}; the model takes [{', '.join(want)}] ({sizes})"
        )
    if spec.batched and shape[0] > max_rows:
        raise ProtocolError(
            f"input {name!r} has {shape[0]} rows, over the limit of {max_rows} per request; "
            "split it into smaller requests",
            status=413,
        )
    if math.prod(shape) > max_values:
        raise ProtocolError(
            f"input {name!r} has shape {shape}: {math.prod(shape)} values, over the limit of "
            f"{max_values} per request; send a smaller tensor",
            status=413,
        )
    return tuple(shape)


def max_values(spec: TensorSpec, max_rows: int) -> int:
    """Most values one request may carry for a batched ``spec`` (``max_rows`` rows)."""
    return max_rows * math.prod(d for d in spec.shape[1:] if d > 0)


def _check_finite(tensor: np.ndarray, spec: TensorSpec) -> np.ndarray:
    if tensor.dtype.kind == "f" and not np.isfinite(tensor).all():
        raise ProtocolError(
            f"input {spec.name!r} has NaN or infinite values; send finite numbers "
            "(pixels scaled to [0, 1] for FP32 models)"
        )
    return tensor


def _from_json_data(data: Any, spec: TensorSpec, shape: tuple[int, ...]) -> np.ndarray:
    """A JSON ``data`` list (flat or nested, row-major) -> array of ``spec``'s dtype and ``shape``."""
    if not isinstance(data, list):
        raise ProtocolError(f"input {spec.name!r}: 'data' must be a list of numbers")
    try:
        raw = np.asarray(data)
    except ValueError:  # ragged nesting
        raise ProtocolError(
            f"input {spec.name!r}: 'data' is a ragged list; give a flat or evenly nested list of numbers"
        ) from None
    return tensor_from_values(raw, spec, shape, "'data'")


def tensor_from_values(
    raw: np.ndarray, spec: TensorSpec, shape: tuple[int, ...], what: str = "the contents"
) -> np.ndarray:
    """Values as parsed (JSON ``data``, gRPC typed ``contents``) -> ``spec``'s dtype and ``shape``.

    Raises:
        ProtocolError: the wrong count, integers out of the datatype's range,
            non-numbers, or NaN/infinity (400).
    """
    count = math.prod(shape)
    if raw.size != count:
        raise ProtocolError(
            f"input {spec.name!r}: {what} has {raw.size} values, shape {list(shape)} needs {count}"
        )
    dtype = spec.dtype
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if raw.size and (
            raw.dtype.kind not in "iub" or int(raw.min()) < info.min or int(raw.max()) > info.max
        ):
            raise ProtocolError(
                f"input {spec.name!r}: {what} must be integers in [{info.min}, {info.max}] for {spec.datatype}"
            )
    elif raw.size and raw.dtype.kind not in "iufb":
        raise ProtocolError(f"input {spec.name!r}: {what} must be numbers for {spec.datatype}")
    with np.errstate(over="ignore"):  # a value beyond the dtype becomes inf, refused next
        tensor = raw.astype(dtype).reshape(shape)
    return _check_finite(tensor, spec)


def tensor_from_bytes(raw: bytes, spec: TensorSpec, shape: tuple[int, ...]) -> np.ndarray:
    """Raw little-endian bytes (binary extension, gRPC ``raw_input_contents``) -> the tensor.

    Raises:
        ProtocolError: the wrong number of bytes for ``shape``, or NaN/infinity (400).
    """
    need = math.prod(shape) * spec.dtype.itemsize
    if len(raw) != need:
        raise ProtocolError(
            f"input {spec.name!r}: binary_data_size is {len(raw)} bytes, "
            f"shape {list(shape)} of {spec.datatype} needs {need}"
        )
    wire = spec.dtype.newbyteorder("<")  # the extension sends little-endian bytes
    array = np.frombuffer(raw, dtype=wire).reshape(shape)  # read-only view of the body
    return _check_finite(array if wire == spec.dtype else array.astype(spec.dtype), spec)


def _header_split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    try:
        size = int(header_length)
    except ValueError:
        size = -1
    if size < 0 or size > len(body):
        raise ProtocolError(
            f"{HEADER_LENGTH} is {header_length!r}; it must be the JSON header's size in bytes, "
            f"at most the body's {len(body)}"
        )
    return body[:size], body[size:]


def parse_infer_request(
    body: bytes,
    header_length: str | None,
    model_input: TensorSpec,
    model_outputs: Sequence[TensorSpec],
    max_rows: int,
    max_input_values: int | None = None,
) -> InferRequest:
    """Check and decode an infer request body for a model with one input.

    Args:
        body: the whole request body.
        header_length: the ``Inference-Header-Content-Length`` header, if sent
            (binary tensor data extension).
        model_input: the model's input.
        model_outputs: the model's outputs.
        max_rows: most rows one request may carry.
        max_input_values: most values the input may hold (default: ``max_rows`` rows).

    Returns:
        The request, its tensor in the model's dtype and shape.

    Raises:
        ProtocolError: malformed or too deeply nested JSON, an unknown input or
            output, the wrong datatype, shape or amount of data, NaN/infinity
            (status 400; 413 for too many rows or values).
    """
    limit = max_values(model_input, max_rows) if max_input_values is None else max_input_values
    header, binary = _header_split(body, header_length)
    request = _json_object(
        header, "request body" if header_length is None else "JSON header", limit
    )
    request_id = request.get("id", "")
    if not isinstance(request_id, str):
        raise ProtocolError("'id' must be a string")
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or not all(isinstance(i, dict) for i in inputs):
        raise ProtocolError("'inputs' must be a list of tensor objects")
    names = [i.get("name") for i in inputs]
    unknown = [n for n in names if n != model_input.name]
    if unknown or len(names) != 1:
        what = f"unknown input {unknown[0]!r}" if unknown else f"{len(names)} inputs"
        raise ProtocolError(f"{what}; the model takes one input, {model_input.name!r}")
    entry = inputs[0]
    check_datatype(entry.get("datatype"), model_input)
    shape = check_shape(entry.get("shape"), model_input, max_rows, limit)
    size = _parameters(entry, f"input {model_input.name!r}").get("binary_data_size")
    if size is None:
        if binary:
            raise ProtocolError(
                f"the body has {len(binary)} bytes after the JSON header but no input has 'binary_data_size'"
            )
        tensor = _from_json_data(entry.get("data"), model_input, shape)
    else:
        if not isinstance(size, int) or isinstance(size, bool) or size != len(binary):
            raise ProtocolError(
                f"input {model_input.name!r}: binary_data_size {size!r} does not match "
                f"the {len(binary)} bytes after the JSON header"
            )
        if "data" in entry:
            raise ProtocolError(f"input {model_input.name!r} has both 'data' and binary data")
        tensor = tensor_from_bytes(binary, model_input, shape)
    binary_default = bool(_parameters(request, "request").get("binary_data_output", False))
    return InferRequest(
        request_id, tensor, _requested_outputs(request, model_outputs, binary_default)
    )


def _requested_outputs(
    request: dict[str, Any], model_outputs: Sequence[TensorSpec], binary_default: bool
) -> tuple[RequestedOutput, ...]:
    asked = request.get("outputs")
    if asked is None:
        return tuple(RequestedOutput(o.name, binary_default) for o in model_outputs)
    if not isinstance(asked, list) or not all(isinstance(o, dict) for o in asked):
        raise ProtocolError("'outputs' must be a list of objects with a 'name'")
    known = {o.name for o in model_outputs}
    result = []
    for out in asked:
        name = out.get("name")
        if name not in known:
            raise ProtocolError(
                f"unknown output {name!r}; the model has {', '.join(repr(n) for n in sorted(known))}"
            )
        params = _parameters(out, f"output {name!r}")
        if params.get("classification"):
            raise ProtocolError(
                "the classification extension is not supported; ask for the probabilities "
                "(or POST pictures to /v1/classify for labels)"
            )
        result.append(RequestedOutput(name, bool(params.get("binary_data", binary_default))))
    return tuple(result)


def encode_infer_response(
    model_name: str,
    model_version: str,
    request_id: str,
    outputs: Sequence[tuple[RequestedOutput, np.ndarray]],
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when any output is binary.

    Returns:
        ``(body, header_length)``: send ``header_length`` as ``Inference-Header-Content-Length``
        when it is not ``None`` (the body is then the JSON header followed by raw bytes).
    """
    tensors: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for requested, array in outputs:
        tensor: dict[str, Any] = {
            "name": requested.name,
            "datatype": datatype_of(array.dtype),
            "shape": list(array.shape),
        }
        if requested.binary:
            raw = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
            tensor["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            tensor["data"] = array.ravel().tolist()  # float32 -> float: exact round trip
        tensors.append(tensor)
    response: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id:
        response["id"] = request_id
    response["outputs"] = tensors
    header = dumps(response)
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)


def dumps(payload: dict[str, Any]) -> bytes:
    """A JSON answer body, in the server's one style: compact (no spaces), UTF-8."""
    return orjson.dumps(payload)


def error_body(message: str) -> bytes:
    """The protocol's error shape: ``{"error": message}``."""
    return dumps({"error": message})
