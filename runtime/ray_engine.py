"""Scale-out batch inference on Ray Data: the local guarantees, on a cluster.

:func:`classify_dataset` turns input files (local paths, folders, globs, or
pyarrow-filesystem URIs such as ``s3://bucket/scans/``), or a Ray Dataset of
bytes, into a lazy Ray Dataset of result rows. The plan, executed in a stream
by Ray Data when the caller consumes or writes it::

    read_binary_files(include_paths=True)       read tasks, where the data is
      -> map_batches(decode_batch)               our decode + MNIST-style preprocessing
      -> map_batches(ClassifyBatch, compute=ActorPoolStrategy(...))
                                                 one Classifier per actor (1 ORT thread on CPU,
                                                 num_gpus + CUDA on GPU nodes)
      -> union(error rows for inputs that were never readable)

Every input gives exactly one row (see :data:`RESULT_COLUMNS`): a prediction, or
an error. An actor that dies is restarted and its batch retried (Ray Data's
actor-pool defaults, which this module relies on and the tests check). Ray is imported lazily: this module
(and the rest of :mod:`mnist_edge.runtime`) imports without it; the functions
that need it raise :class:`RayEngineError` naming the ``scale`` extra.
"""

from __future__ import annotations

import fnmatch
import functools
import os
import stat
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np

from mnist_edge.runtime.arrays import is_array_file
from mnist_edge.runtime.errors import MnistEdgeError, first_line
from mnist_edge.runtime.images import ImageOptions, load_bytes_batch
from mnist_edge.runtime.inputs import Source, expand_inputs
from mnist_edge.runtime.session import GPU_PROVIDERS, PROVIDER_NAMES, SessionConfig

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.fs as pafs
    from ray.data import Dataset

    from mnist_edge.runtime.classifier import Classifier

RESULT_COLUMNS = ("path", "label", "confidence", "top_k", "error")
"""The columns of a result row: ``label``/``confidence``/``top_k`` are null on error rows,
``error`` is null on the others; ``top_k`` is a list of ``{label, confidence}`` (empty
unless asked for)."""

ARRAY_FILE_ERROR = "array files (.npy, IDX) hold many images: classify them with the local engine"

# The columns between the decode and the classify stage; "" = no error.
_PATH, _IMAGE, _ERROR = "path", "image", "error"


class RayEngineError(MnistEdgeError, RuntimeError):
    """Ray is missing, the cluster cannot be reached, or the inputs are not what the engine takes."""


@dataclass(frozen=True)
class RayConfig:
    """How the Ray Data job runs.

    Attributes:
        provider: ONNX Runtime provider in the actors: ``cpu``, or a GPU one (``cuda``, ...).
            Never falls back: an actor that cannot get it fails.
        batch_size: images per block handed to a decode task and to an actor.
        model_batch: images per ONNX Runtime call inside an actor (one thread is
            fastest around 64 on a 28x28 CNN).
        actors: actor-pool size; ``None`` = autoscale from 1 to what the cluster's
            CPUs (or GPUs) allow.
        cpus_per_actor: CPUs each actor reserves. Keep it fractional on small
            machines: actors holding every CPU starve the read tasks and the job
            never ends (ray-project/ray#44687).
        gpus_per_actor: GPUs each actor reserves; ``None`` = 1 for a GPU provider, 0 on CPU.
        invert: as :attr:`ImageOptions.invert`.
        max_pixels: as :attr:`ImageOptions.max_pixels`.
        top_k: alternatives per image in the ``top_k`` column (0 = none).
        rows_per_file: rows per Parquet file when writing (at least).
    """

    provider: str = "cpu"
    batch_size: int = 256
    model_batch: int = 64
    actors: int | None = None
    cpus_per_actor: float = 0.5
    gpus_per_actor: float | None = None
    invert: str = "auto"
    max_pixels: int = 40_000_000
    top_k: int = 0
    rows_per_file: int = 100_000

    def __post_init__(self) -> None:
        for name in ("batch_size", "model_batch", "rows_per_file"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, not {getattr(self, name)}")
        if self.actors is not None and self.actors < 1:
            raise ValueError(f"actors must be >= 1 (or None to autoscale), not {self.actors}")
        if self.cpus_per_actor <= 0:
            raise ValueError(f"cpus_per_actor must be > 0, not {self.cpus_per_actor}")
        if self.gpus_per_actor is not None and self.gpus_per_actor < 0:
            raise ValueError(f"gpus_per_actor must be >= 0, not {self.gpus_per_actor}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, not {self.top_k}")
        gpu = self.provider_name in GPU_PROVIDERS
        if gpu and self.gpus_per_actor == 0:
            raise ValueError(
                f"provider {self.provider!r} runs on a GPU: gpus_per_actor must be > 0"
            )
        if not gpu and self.gpus_per_actor:
            raise ValueError(
                f"gpus_per_actor={self.gpus_per_actor} needs a GPU provider (cuda), not {self.provider!r}"
            )
        ImageOptions(invert=self.invert, max_pixels=self.max_pixels)  # same checks as locally

    @property
    def provider_name(self) -> str:
        """The ONNX Runtime name of :attr:`provider` (``auto`` is not allowed: actors must agree)."""
        key = self.provider.strip()
        if key.lower() == "auto":
            raise ValueError("provider must be named for Ray actors (cpu, cuda, ...), not 'auto'")
        return PROVIDER_NAMES.get(key.lower(), key)

    @property
    def gpus(self) -> float:
        """GPUs each actor reserves."""
        if self.gpus_per_actor is not None:
            return self.gpus_per_actor
        return 1.0 if self.provider_name in GPU_PROVIDERS else 0.0


def import_ray() -> Any:
    """``import ray.data`` (and return ``ray``), or a :class:`RayEngineError` saying how to get it."""
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise RayEngineError(
            f"Ray Data is not installed ({exc}); install the `scale` extra: "
            "pip install 'mnist-edge[scale]'"
        ) from None
    return ray


def result_schema() -> pa.Schema:
    """The Arrow schema of result rows (:data:`RESULT_COLUMNS`)."""
    import pyarrow as pa

    alternative = pa.struct([("label", pa.string()), ("confidence", pa.float64())])
    return pa.schema(
        [
            ("path", pa.string()),
            ("label", pa.string()),
            ("confidence", pa.float64()),
            ("top_k", pa.list_(alternative)),
            ("error", pa.string()),
        ]
    )


def error_table(paths: Sequence[str], errors: Sequence[str]) -> pa.Table:
    """Result rows for inputs that failed before classification."""
    import pyarrow as pa

    n = len(paths)
    schema = result_schema()
    return pa.table(
        [
            pa.array(paths, pa.string()),
            pa.nulls(n, pa.string()),
            pa.nulls(n, pa.float64()),
            pa.nulls(n, schema.field("top_k").type),
            pa.array(errors, pa.string()),
        ],
        schema=schema,
    )


# ---------------------------------------------------------------- the two stages


def decode_batch(batch: dict[str, np.ndarray], options: ImageOptions) -> dict[str, np.ndarray]:
    """Decode stage: ``{bytes, path}`` rows -> ``{path, image (k, size, size) uint8, error}``.

    Runs in Ray tasks; the same decode and preprocessing as the local CLI
    (:func:`~mnist_edge.runtime.images.load_bytes_batch`).
    """
    missing = [c for c in ("bytes", "path") if c not in batch]
    if missing:
        raise RayEngineError(
            f"the dataset has no {' or '.join(missing)} column; pass a Dataset from "
            "ray.data.read_binary_files(..., include_paths=True)"
        )
    paths = [str(p) for p in batch["path"]]
    blobs = [bytes(b) for b in batch["bytes"]]
    images, errors = load_bytes_batch(blobs, options)  # (k, size, size) uint8
    for i, path in enumerate(paths):
        if is_array_file(path):
            errors[i] = ARRAY_FILE_ERROR
    return {
        _PATH: np.asarray(paths, dtype=object),
        _IMAGE: images,
        _ERROR: np.asarray([e or "" for e in errors], dtype=object),
    }


class ClassifyBatch:
    """Classify stage: one :class:`Classifier` per Ray actor, decoded rows -> result rows.

    The model travels as bytes (workers need no shared file system) and is
    loaded from a private temporary file.

    Args:
        model: the ONNX file's bytes.
        name: the model's name, for messages.
        session: ONNX Runtime settings (provider; one thread on CPU).
        top_k: alternatives per image (0 = none).
        model_batch: images per ONNX Runtime call.
    """

    def __init__(
        self, model: bytes, name: str, session: SessionConfig, top_k: int, model_batch: int
    ) -> None:
        from mnist_edge.runtime.classifier import Classifier

        with tempfile.TemporaryDirectory(prefix="mnist-edge-actor-") as tmp:
            path = Path(tmp) / name
            path.write_bytes(model)
            self.classifier: Classifier = Classifier(path, config=session)
        self.top_k = min(top_k, len(self.classifier.classes))
        self.model_batch = model_batch
        self.schema = result_schema()

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        import pyarrow as pa

        paths = [str(p) for p in batch[_PATH]]
        errors = [str(e) for e in batch[_ERROR]]
        ok = np.flatnonzero([not e for e in errors])
        images = np.asarray(batch[_IMAGE])[ok]  # (n_ok, size, size) uint8
        classes = self.classifier.classes
        labels: list[str | None] = [None] * len(paths)
        confs: list[float | None] = [None] * len(paths)
        alts: list[list[dict[str, Any]] | None] = [None] * len(paths)
        for start in range(0, len(ok), self.model_batch):
            predictions = self.classifier.predict(images[start : start + self.model_batch])
            top = predictions.top_k(self.top_k) if self.top_k else None  # (n, k)
            probs = predictions.probabilities
            rows = ok[start : start + self.model_batch]
            for i, (row, index, conf) in enumerate(
                zip(
                    rows,
                    predictions.indices.tolist(),
                    predictions.confidences.tolist(),
                    strict=True,
                )
            ):
                labels[row] = classes[index]
                confs[row] = conf
                alts[row] = (
                    [{"label": classes[j], "confidence": float(probs[i, j])} for j in top[i]]
                    if top is not None
                    else []
                )
        return pa.table(
            {
                "path": paths,
                "label": labels,
                "confidence": confs,
                "top_k": alts,
                "error": [e or None for e in errors],
            },
            schema=self.schema,
        )


# ---------------------------------------------------------------- inputs


@dataclass(frozen=True)
class RemoteFiles:
    """Files under one URI: read with ``filesystem``; Ray reports their paths without the scheme.

    Attributes:
        scheme: ``s3://``, ``gs://``, ``file://`` ... (put back in front of each path).
        filesystem: the pyarrow filesystem for the URI.
        paths: file paths as ``filesystem`` names them (``bucket/key`` on object stores).
    """

    scheme: str
    filesystem: pafs.FileSystem
    paths: list[str]


@dataclass(frozen=True)
class InputPlan:
    """Where the readable inputs are, and the rows for those that are not.

    Attributes:
        local: local files to read, named as the local CLI names them.
        remote: files behind URIs, one entry per URI given.
        errors: inputs that failed already (missing, empty folder, no glob match, not a file).
    """

    local: list[str]
    remote: list[RemoteFiles]
    errors: list[Source]


def _is_uri(spec: str) -> bool:
    return "://" in spec


def _check_local(source: Source) -> Source:
    """A listed file, or why it cannot be read as one (in the local CLI's words)."""
    try:
        info = os.stat(source.path)
    except OSError as exc:
        return Source(source.path, f"cannot read image: {exc.strerror or exc}")
    if stat.S_ISDIR(info.st_mode):
        return Source(source.path, "is a directory")
    if not stat.S_ISREG(info.st_mode):  # reading a FIFO or device would block a read task
        return Source(source.path, "not a regular file (FIFO, device or socket)")
    return source


def _wildcard(uri: str) -> int:
    """Index of the first glob character in ``uri``, or -1."""
    found = [i for i in (uri.find("*"), uri.find("?"), uri.find("[")) if i >= 0]
    return min(found) if found else -1


def _expand_uri(uri: str) -> RemoteFiles | Source:
    """One URI -> its files (a file, a folder walked recursively, or a glob), or an error.

    As locally: names starting with ``.`` below the folder are skipped; ``*`` and
    ``?`` do not cross ``/`` unless the pattern has ``**``.
    """
    import pyarrow as pa
    import pyarrow.fs as pafs

    scheme = uri.split("://", 1)[0] + "://"
    cut = _wildcard(uri)
    root = uri if cut < 0 else uri[: uri.rfind("/", 0, cut) + 1]
    try:
        fs, base = pafs.FileSystem.from_uri(root)
        base = base.rstrip("/") or base
        pattern = None if cut < 0 else base + "/" + uri[len(root) :]
        info = fs.get_file_info(base)
        if info.type == pafs.FileType.NotFound:
            return Source(uri, "no such file or directory")
        if info.type == pafs.FileType.File and pattern is None:
            return RemoteFiles(scheme, fs, [base])
        listing = fs.get_file_info(pafs.FileSelector(base, recursive=True))
    except (OSError, ValueError, pa.ArrowException) as exc:
        return Source(uri, f"cannot open this location: {first_line(exc)}")
    files = sorted(
        f.path
        for f in listing
        if f.type == pafs.FileType.File
        and not any(part.startswith(".") for part in f.path[len(base) :].split("/"))
        and (pattern is None or _glob_match(f.path, pattern))
    )
    if not files:
        why = "no file matches this pattern" if pattern else "empty directory (no files in it)"
        return Source(uri, why)
    return RemoteFiles(scheme, fs, files)


def _glob_match(path: str, pattern: str) -> bool:
    if "**" not in pattern and path.count("/") != pattern.count("/"):
        return False
    return fnmatch.fnmatchcase(path, pattern)


def plan_inputs(specs: Sequence[str], stdin: TextIO | None = None) -> InputPlan:
    """Expand inputs without reading them: local ones exactly as the local CLI does
    (:func:`~mnist_edge.runtime.inputs.expand_inputs`), URIs with pyarrow's filesystems.

    Every input ends up in exactly one of the plan's lists.
    """
    local: list[str] = []
    remote: list[RemoteFiles] = []
    errors: list[Source] = []
    local_specs = [s for s in specs if not _is_uri(s)]
    for source in expand_inputs(local_specs, stdin) if local_specs else ():
        source = _check_local(source) if source.error is None else source
        if source.error is None:
            local.append(source.path)
        else:
            errors.append(source)
    for uri in (s for s in specs if _is_uri(s)):
        found = _expand_uri(uri)
        if isinstance(found, Source):
            errors.append(found)
        else:
            remote.append(found)
    return InputPlan(local, remote, errors)


# ---------------------------------------------------------------- the job


def _add_scheme(batch: dict[str, np.ndarray], scheme: str) -> dict[str, np.ndarray]:
    batch["path"] = np.asarray([scheme + str(p) for p in batch["path"]], dtype=object)
    return batch


def _remember_missing_http_filesystem() -> None:
    """Make a failing ``import fsspec.implementations.http`` fail fast from now on.

    Ray 2.60 tries that import once per path it resolves; where fsspec (which
    ``ray[data]`` requires) is installed without aiohttp, each try re-runs the
    module until it fails: 2-4 ms per path, 20 s for 5,000 files on a loaded
    2-core machine. A ``None`` entry in ``sys.modules`` makes the retries
    immediate ``ImportError`` s, which Ray takes as "no HTTP filesystem".
    """
    try:
        import fsspec.implementations.http  # noqa: F401
    except ImportError:
        sys.modules.setdefault("fsspec.implementations.http", None)  # type: ignore[arg-type]


def read_inputs(plan: InputPlan, ray: Any) -> Dataset | None:
    """The readable files of ``plan`` as one Dataset of ``{bytes, path}`` (``None`` if there are none)."""
    _remember_missing_http_filesystem()
    parts: list[Dataset] = []
    if plan.local:
        parts.append(ray.data.read_binary_files(plan.local, include_paths=True))
    for remote in plan.remote:
        ds = ray.data.read_binary_files(
            remote.paths, include_paths=True, filesystem=remote.filesystem
        )
        parts.append(ds.map_batches(functools.partial(_add_scheme, scheme=remote.scheme)))
    if not parts:
        return None
    return parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]


def load_model(model: str | os.PathLike[str]) -> Classifier:
    """Open ``model`` here (CPU, one thread) to check it and read its metadata before any job starts.

    Raises:
        ModelError: missing or unusable model file.
    """
    from mnist_edge.runtime.classifier import Classifier

    return Classifier(model, config=SessionConfig(provider="cpu", threads=1))


def classify_dataset(
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | Dataset,
    model: str | os.PathLike[str],
    config: RayConfig = RayConfig(),
    *,
    stdin: TextIO | None = None,
    classifier: Classifier | None = None,
) -> Dataset:
    """Classify digit images on Ray Data; returns a lazy Dataset of result rows.

    Nothing runs until the Dataset is consumed (``write_parquet``, ``iter_batches``,
    ...); it streams, so neither the inputs nor the results are gathered anywhere.
    Rows come in no particular order; every input gives exactly one (see
    :data:`RESULT_COLUMNS`), and results equal the local CLI's on the same files.

    Args:
        inputs: local files, folders (recursive), globs, ``-`` (paths on ``stdin``),
            URIs that pyarrow's filesystems read (``s3://bucket/dir``, ``gs://...``,
            ``file:///...``), or a ``ray.data.Dataset`` with ``bytes`` and ``path`` columns
            (e.g. from ``read_binary_files(..., include_paths=True)``).
        model: the ``.onnx`` file (read here and shipped to the actors as bytes).
        config: the job's settings.
        stdin: where ``-`` reads paths from.
        classifier: ``model`` already opened by :func:`load_model` (saves opening it twice).

    Returns:
        A ``ray.data.Dataset`` with columns :data:`RESULT_COLUMNS`.

    Raises:
        RayEngineError: Ray is not installed, or no node can hold an actor.
        ModelError: the model file is missing or unusable.
    """
    ray = import_ray()
    from ray.data import ActorPoolStrategy

    if not ray.is_initialized():
        ray.init()  # as Ray Data would: RAY_ADDRESS, else a local Ray
    check_resources(ray, config)
    classifier = classifier or load_model(model)
    options = ImageOptions(
        preprocessing=classifier.metadata.preprocessing,
        invert=config.invert,
        max_pixels=config.max_pixels,
    )
    errors: list[Source] = []
    if isinstance(inputs, ray.data.Dataset):
        files: Dataset | None = inputs
    else:
        specs = [os.fspath(inputs)] if isinstance(inputs, (str, os.PathLike)) else inputs
        plan = plan_inputs([os.fspath(s) for s in specs], stdin)
        files, errors = read_inputs(plan, ray), plan.errors
    failed = (
        ray.data.from_arrow(error_table([s.path for s in errors], [s.error or "" for s in errors]))
        if errors
        else None
    )
    if files is None:
        return failed if failed is not None else ray.data.from_arrow(error_table([], []))
    decoded = files.map_batches(
        functools.partial(decode_batch, options=options), batch_size=config.batch_size
    )
    session = SessionConfig(provider=config.provider_name, threads=1)
    # min_size 1: a small input need not feed every actor (Ray warns when it cannot)
    most = config.actors if config.actors is not None else _max_actors(ray, config)
    pool = ActorPoolStrategy(min_size=1, max_size=most, initial_size=config.actors or 1)
    results = decoded.map_batches(
        ClassifyBatch,
        fn_constructor_kwargs={
            "model": classifier.path.read_bytes(),
            "name": classifier.path.name,
            "session": session,
            "top_k": config.top_k,
            "model_batch": config.model_batch,
        },
        batch_size=config.batch_size,
        compute=pool,
        num_cpus=config.cpus_per_actor,
        num_gpus=config.gpus,
        # No max_restarts/max_task_retries: Ray Data's defaults for actor pools (-1, -1)
        # restart a dead actor and retry its batch on the replacement, and passing
        # them (as ray_remote_args) is deprecated in Ray 2.60.
    )
    return results.union(failed) if failed is not None else results


def check_resources(ray: Any, config: RayConfig) -> None:
    """Refuse a job whose actors fit nowhere in the cluster (Ray would wait for them forever).

    Raises:
        RayEngineError: no node has the CPUs or GPUs one actor asks for.
    """
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    for name, amount in (("CPU", config.cpus_per_actor), ("GPU", config.gpus)):
        if amount > 0 and not any(r.get(name, 0) >= amount for r in nodes):
            most = max((r.get(name, 0) for r in nodes), default=0)
            raise RayEngineError(
                f"each actor asks for {amount:g} {name}, but no node of the cluster has that "
                f"many (the most is {most:g}); ask for less per actor, or add such nodes"
            )


def _max_actors(ray: Any, config: RayConfig) -> int:
    """The most actors the cluster holds now (at least 1), leaving a CPU for read tasks."""
    resources = ray.cluster_resources()
    if config.gpus > 0:
        return max(1, int(resources.get("GPU", 0) / config.gpus))
    return max(1, int((resources.get("CPU", 1) - 1) / config.cpus_per_actor))
