"""The network compiled by ``emx-onnx-cgen`` (PyPI, Apache-2.0, ONNX to dependency-free C) as a
library folder that the firmware and the host checks take like ours: the cross-check of our
emitter (``docs/c.md``).

:func:`emx_library` runs ``emx-onnx-cgen compile`` on an exported ``mnist.onnx`` or
``mnist.int8.onnx`` and puts beside its C file the adapter in ``firmware/emx/`` (``mnist.h``,
and ``mnist_emx.c``: ``mnist_classify`` on emx's entry point) and our pixels-in preprocessing
(``mnist_frame.c``), which emx-onnx-cgen cannot compile: the pixels-in files' shapes depend on
the frame. :func:`classify_emx_on_host` classifies pictures with it on this machine; the
firmware build (:func:`mnist_edge.tools.firmware.measure`) takes the folder as it is, with
:data:`EMX_STACK` bytes of stack.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from mnist_edge.tools.firmware_build import (
    HOST_CC,
    Classified,
    FirmwareError,
    Pictures,
    classify_with,
    library_sources,
    run_tool,
)

EMX_PACKAGE = "emx-onnx-cgen==1.4.0"
# One static-shape image per call; every weight inline as a C array and every temporary on the
# stack (the defaults would fopen weights from a .bin and malloc temporaries over 1 KiB).
EMX_OPTIONS = ("--input-dim", "batch=1", "--large-weight-threshold", "0",
               "--large-temp-threshold", "0", "--model-name", "mnist_emx")  # fmt: skip
EMX_SOURCE = "mnist_emx_model.c"
ADAPTER_FILES = ("mnist.h", "mnist_emx.c")  # firmware/emx/
FRAME_FILES = ("mnist_frame.c", "mnist_frame.h", "frame_api.h")  # the C library's, as they are
# Its activations take a few hundred KiB of stack: link the firmware with 1 MiB (the QEMU
# boards have 4 MiB of RAM).
EMX_STACK = 1024 * 1024
# emx's code passes arrays to const-qualified parameters, which ISO C99 -pedantic rejects, so the
# host build takes export's flags less -pedantic and -Werror.
HOST_FLAGS = ("-std=c99", "-O2", "-Wall", "-fPIC", "-shared")


def emx_library(
    model: Path, out_dir: Path, cgen: Path, source_dir: Path = Path("firmware")
) -> Path:
    """Compile ``model`` with the ``emx-onnx-cgen`` command ``cgen`` into the library folder ``out_dir``.

    Args:
        model: an exported ``mnist.onnx`` or ``mnist.int8.onnx`` (static shapes once the batch
            is pinned to 1).
        out_dir: created if needed; returned.
        cgen: the ``emx-onnx-cgen`` executable (``pip install emx-onnx-cgen==1.4.0``).
        source_dir: the repository's ``firmware/`` folder (the adapter is in its ``emx/``).

    Raises:
        FirmwareError: ``cgen`` or an adapter file is missing, or emx-onnx-cgen failed.
    """
    from mnist_edge.export.c.library import frame_dir

    if not cgen.is_file():
        raise FirmwareError(f"no emx-onnx-cgen at {cgen}: pip install {EMX_PACKAGE}")
    sources = [source_dir / "emx" / name for name in ADAPTER_FILES]
    sources += [frame_dir() / name for name in FRAME_FILES]
    missing = [str(path) for path in sources if not path.is_file()]
    if missing:
        raise FirmwareError(f"the emx adapter needs {', '.join(missing)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    run_tool(
        [str(cgen), "compile", *EMX_OPTIONS, str(model), str(out_dir / EMX_SOURCE)],
        f"emx-onnx-cgen on {model}",
    )
    for path in sources:
        shutil.copyfile(path, out_dir / path.name)
    return out_dir


def classify_emx_on_host(library: Path, pictures: Pictures, build_dir: Path) -> Classified:
    """Compile an :func:`emx_library` folder with the host's ``cc`` and classify ``pictures``."""
    from mnist_edge.export.c.build import HostLibrary

    sources = library_sources(library)
    build_dir.mkdir(parents=True, exist_ok=True)
    shared = (build_dir / "libmnist_emx.so").resolve()
    run_tool(
        [HOST_CC, *HOST_FLAGS, *map(str, sources), "-o", str(shared), "-lm"],
        f"{HOST_CC} on {library}",
    )
    return classify_with(HostLibrary(shared), pictures)
