"""Input expansion and the streamed, ordered pipeline (runtime/inputs.py, runtime/stream.py)."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from helpers.models import digit, expected_probabilities, linear_model
from PIL import Image

from mnist_edge.runtime.errors import ConfigError
from mnist_edge.runtime.inputs import Source, expand_inputs
from mnist_edge.runtime.session import ModelError
from mnist_edge.runtime.stream import Pipeline, PipelineConfig


def _png(path, seed):
    Image.fromarray(digit(seed)).save(path)
    return path


@pytest.fixture
def tree(tmp_path):
    """b/ and a/ with digits, a hidden file, a nested folder, and an empty folder."""
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "deep").mkdir(parents=True)
    (tmp_path / "empty").mkdir()
    _png(tmp_path / "b" / "2.png", 2)
    _png(tmp_path / "b" / "1.png", 1)
    _png(tmp_path / "a" / "deep" / "3.png", 3)
    _png(tmp_path / "a" / ".hidden.png", 4)
    return tmp_path


def _paths(sources):
    return [
        (os.path.relpath(s.path) if os.path.isabs(s.path) else s.path, s.error) for s in sources
    ]


def test_directories_are_walked_sorted_and_hidden_files_skipped(tree):
    got = [s.path for s in expand_inputs([str(tree / "b"), str(tree / "a")])]
    assert got == [
        str(tree / "b" / "1.png"),
        str(tree / "b" / "2.png"),
        str(tree / "a" / "deep" / "3.png"),
    ]


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda p: p / "missing.png", "no such file"),
        (lambda p: p / "empty", "empty directory"),
        (lambda p: p / "nomatch*.png", "no file matches"),
    ],
    ids=["missing", "empty-dir", "glob-no-match"],
)
def test_bad_paths_become_error_sources(tree, make, reason):
    (source,) = list(expand_inputs([str(make(tree))]))
    assert source.error is not None and reason in source.error


def test_broken_symlink_and_symlink_loop(tmp_path):
    os.symlink(tmp_path / "nowhere.png", tmp_path / "broken.png")
    os.symlink(tmp_path / "loop.png", tmp_path / "loop.png")
    errors = {os.path.basename(s.path): s.error for s in expand_inputs([str(tmp_path)])}
    assert "broken symlink" in errors["broken.png"]
    assert "symlink loop" in errors["loop.png"]
    (direct,) = list(expand_inputs([str(tmp_path / "loop.png")]))
    assert "symlink loop" in direct.error


def test_links_to_files_and_special_files_are_listed_in_order(tmp_path):
    _png(tmp_path / "a.png", 0)
    os.symlink(tmp_path / "a.png", tmp_path / "b.png")
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "c.fifo")  # listed; refused when decoded ("not a regular file")
    got = [(os.path.basename(s.path), s.error) for s in expand_inputs([str(tmp_path)])]
    assert got == [("a.png", None), ("b.png", None), ("c.fifo", None)][: len(got)]
    assert len(got) == (3 if hasattr(os, "mkfifo") else 2)


def test_directory_link_cycle_is_reported_once(tmp_path):
    (tmp_path / "d").mkdir()
    _png(tmp_path / "d" / "x.png", 0)
    os.symlink(tmp_path / "d", tmp_path / "d" / "up")
    sources = list(expand_inputs([str(tmp_path / "d")]))
    assert [s.error is None for s in sources] == [False, True]  # "up" (sorted first), then x.png
    assert "symlink loop" in sources[0].error


def test_globs_and_stdin(tree):
    globbed = [s.path for s in expand_inputs([str(tree / "**" / "*.png")])]
    assert sorted(globbed) == sorted(str(tree / p) for p in ("b/1.png", "b/2.png", "a/deep/3.png"))
    stdin = io.StringIO(f"{tree / 'b' / '2.png'}\n\n{tree / 'nope.png'}\n")
    got = list(expand_inputs(["-"], stdin))
    assert got[0] == Source(str(tree / "b" / "2.png"))
    assert "no such file" in got[1].error


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return linear_model(tmp_path_factory.mktemp("m") / "linear.onnx")


def run(model, inputs, **config) -> list:
    with Pipeline(model, inputs, PipelineConfig(**config)) as pipeline:
        return list(pipeline)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """40 digits with bad files and an .npy among them; returns (inputs, expected rows)."""
    root = tmp_path_factory.mktemp("mixed")
    inputs, expected = [], []
    for i in range(40):
        path = _png(root / f"{i:03d}.png", i)
        inputs.append(str(path))
        expected.append((str(path), digit(i)))
        if i % 9 == 4:
            bad = root / f"{i:03d}-bad.png"
            bad.write_bytes(b"not a png")
            inputs.append(str(bad))
            expected.append((str(bad), None))
    stack = np.stack([digit(100 + k) for k in range(5)])
    np.save(root / "stack.npy", stack)
    inputs.insert(10, str(root / "stack.npy"))
    for k in range(5):
        expected.insert(10 + k, (f"{root / 'stack.npy'}[{k}]", stack[k]))
    inputs.append(str(root / "gone.png"))
    expected.append((str(root / "gone.png"), None))
    return inputs, expected


@pytest.mark.parametrize(
    ("batch_size", "workers"),
    [(1, 0), (7, 0), (256, 0), (3, 2)],
    ids=["b1-inline", "b7-inline", "b256-inline", "b3-processes"],
)
def test_pipeline_keeps_order_and_accounts_for_every_input(model, mixed, batch_size, workers):
    inputs, expected = mixed
    results = run(model, inputs, batch_size=batch_size, workers=workers, chunk_size=4, top_k=2)
    assert [r.path for r in results] == [path for path, _ in expected]
    for result, (_, image) in zip(results, expected, strict=True):
        if image is None:
            assert result.error and result.label is None
            continue
        probs = expected_probabilities(image[None])[0]
        assert result.error is None
        assert result.label == str(int(probs.argmax()))
        assert result.confidence == pytest.approx(probs.max(), rel=1e-4)
        assert [lab for lab, _ in result.top_k] == [str(int(j)) for j in np.argsort(-probs)[:2]]


def test_batch_size_does_not_change_results(model, mixed):
    inputs, _ = mixed
    assert run(model, inputs, batch_size=1, workers=0) == run(
        model, inputs, batch_size=256, workers=0
    )


def test_pipeline_is_lazy(model, tmp_path):
    """Results come before the input stream ends: inputs are never collected up front."""
    _png(tmp_path / "x.png", 0)
    seen = []

    def inputs():
        for i in range(10_000):
            seen.append(i)
            yield str(tmp_path / "x.png")

    config = PipelineConfig(batch_size=8, workers=0, chunk_size=8)
    with Pipeline(model, inputs(), config) as pipeline:
        stream = iter(pipeline)
        assert next(stream).ok
        assert len(seen) < 200


@pytest.mark.parametrize(
    "infer_in_workers", [True, False], ids=["infer-in-workers", "decode-only-workers"]
)
def test_process_pool_gives_exactly_the_inline_results(model, mixed, infer_in_workers):
    inputs, _ = mixed
    inline = run(model, inputs, workers=0, top_k=3)
    config = PipelineConfig(
        workers=2, chunk_size=5, batch_size=4, top_k=3, infer_in_workers=infer_in_workers
    )
    with Pipeline(model, inputs, config) as pipeline:
        assert pipeline.pool is not None and pipeline.pool.ready(wait=True)
        # a model only where it runs, on the provider this process resolved
        assert (pipeline.worker_model is not None) == infer_in_workers
        if pipeline.worker_model is not None:
            assert pipeline.worker_model.provider == pipeline.classifier.provider
        assert list(pipeline) == inline


@pytest.mark.parametrize(
    ("inline_limit", "started"),
    [(100, False), (10, True)],
    ids=["few-inputs-no-workers", "many-inputs-workers-start-before-the-model"],
)
def test_workers_start_only_for_many_inputs(model, mixed, inline_limit, started):
    inputs, _ = mixed
    config = PipelineConfig(chunk_size=5, batch_size=4, top_k=3, inline_limit=inline_limit)
    with Pipeline(model, inputs, config) as pipeline:
        assert (pipeline.pool is not None) == started
        if pipeline.pool is not None:
            assert pipeline.pool.ready(wait=True)  # all work goes to the workers
        results = list(pipeline)
    assert results == run(model, inputs, workers=0, top_k=3)


def test_workers_run_the_model_on_the_provider_resolved_here(model, mixed):
    """`auto` is resolved once, where the model opens; workers get that name, never `auto`."""
    from mnist_edge.runtime.session import CPU, SessionConfig

    inputs, _ = mixed
    config = PipelineConfig(workers=1, chunk_size=5, batch_size=4)
    with Pipeline(model, inputs, config, SessionConfig(provider="auto")) as pipeline:
        assert pipeline.classifier.provider == CPU  # the stock build: auto is the CPU here
        assert pipeline.worker_model is not None
        assert pipeline.worker_model.provider == CPU
        assert list(pipeline) == run(model, inputs, workers=0)


def test_a_missing_model_is_reported_before_any_input_is_read(tmp_path):
    """A missing model must be reported before a huge folder or glob is walked."""
    seen = []

    def inputs():
        seen.append(1)
        yield "x.png"

    with pytest.raises(ModelError, match="not found"):
        Pipeline(tmp_path / "none.onnx", inputs())
    assert seen == []


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("batch_size", 0, "batch_size must be >= 1"),
        ("workers", -1, "workers must be >= 0"),
        ("max_in_flight", 0, "max_in_flight must be >= 1"),
        ("max_pixels", 0, "max_pixels must be a whole number >= 1"),
        ("invert", "sometimes", "invert must be one of auto, always, never"),
    ],
)
def test_config_is_validated_when_made(field, value, words):
    with pytest.raises(ConfigError, match=words):
        PipelineConfig(**{field: value})
