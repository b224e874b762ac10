"""One line out of multi-line exception messages (runtime/errors.py)."""

from __future__ import annotations

import pytest

from mnist_edge.runtime.errors import first_line, last_line


@pytest.mark.parametrize(
    "message, first, last",
    [
        (ValueError("\n  cause one  \n\n detail two \n"), "cause one", "detail two"),
        (ValueError(""), "ValueError", "ValueError"),
        ("stderr text\nERROR: no wheel\n", "stderr text", "ERROR: no wheel"),
        ("", "", ""),
    ],
    ids=["multi-line", "empty-exception", "text", "empty-text"],
)
def test_first_and_last_line(message, first, last) -> None:
    assert first_line(message) == first
    assert last_line(message) == last


def test_every_library_error_derives_from_one_base() -> None:
    """Callers (and the CLIs) catch MnistEdgeError; the built-in bases keep working too."""
    from mnist_edge.export.artifacts import ArtifactError
    from mnist_edge.export.config import ExportConfigError
    from mnist_edge.export.verify import ValidationError
    from mnist_edge.runtime.errors import MnistEdgeError
    from mnist_edge.runtime.extras import MissingExtraError
    from mnist_edge.runtime.idx import IdxFormatError
    from mnist_edge.runtime.images import ImageError
    from mnist_edge.runtime.session import ModelError, ProviderError
    from mnist_edge.runtime.workers import DecoderError
    from mnist_edge.tools.samples import SamplesError
    from mnist_edge.train.checkpoint import CheckpointError
    from mnist_edge.train.config import TrainError
    from mnist_edge.train.mirror import DataError

    value_errors = [ArtifactError, ExportConfigError, ValidationError, IdxFormatError]
    value_errors += [ImageError, ModelError, CheckpointError, TrainError]
    runtime_errors = [MissingExtraError, SamplesError, ProviderError, DecoderError, DataError]
    for cls in value_errors + runtime_errors:
        assert issubclass(cls, MnistEdgeError), cls
    assert all(issubclass(cls, ValueError) for cls in value_errors)
    assert all(issubclass(cls, RuntimeError) for cls in runtime_errors)
