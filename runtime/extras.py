"""Which optional dependencies ("extras") are installed: checked before a command imports them.

``pip install '.[cpu]'`` gives only the runtime; ``mnist-train`` and
``mnist-export`` then fail with one line that names the missing extra instead
of a ``ModuleNotFoundError`` traceback.

ONNX Runtime comes in builds that all install the same ``onnxruntime`` module
folder (the ``cpu``, ``gpu`` and ``openvino`` extras pick one each): with two
installed, whichever came last owns the files and the other's providers
silently disappear (microsoft/onnxruntime#26996). :func:`ort_conflict` says so
in one line.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from collections.abc import Sequence

from mnist_edge.runtime.errors import MissingExtraError

# extra -> the top-level modules it provides
EXTRAS: dict[str, tuple[str, ...]] = {
    "train": ("torch", "torchvision", "matplotlib"),
    "export": ("torch", "torchvision", "onnx", "onnxscript"),
    "cpu": ("onnxruntime",),
    "scale": ("ray", "pyarrow"),
    "serve": (
        "fastapi",
        "uvicorn",
        "python_multipart",
        "grpc",
        "tritonclient",
        "prometheus_client",
    ),
}
# The extras that each install one ONNX Runtime build (mutually exclusive).
ORT_BUILDS: dict[str, str] = {
    "cpu": "onnxruntime",
    "gpu": "onnxruntime-gpu",
    "openvino": "onnxruntime-openvino",
}
# Every PyPI distribution that installs the `onnxruntime` module folder.
ORT_DISTRIBUTIONS = (
    *ORT_BUILDS.values(),
    "onnxruntime-directml",
    "onnxruntime-qnn",
    "onnxruntime-training",
)


class OrtConflictWarning(UserWarning):
    """More than one ONNX Runtime distribution is installed; their providers may be missing."""


def missing_modules(extra: str) -> list[str]:
    """Modules of ``extra`` that cannot be imported here."""
    return [m for m in EXTRAS[extra] if importlib.util.find_spec(m) is None]


def install_advice(*extras: str) -> str:
    """How to add ``extras``, in words true for a pip install and a clone alike."""
    spec = ",".join(extras)
    noun = "extra" if len(extras) == 1 else "extras"
    return f"install mnist-edge with the {spec} {noun} (from a clone: pip install '.[{spec}]')"


def ort_build_advice(distribution: str, extra: str | None = None) -> str:
    """How to switch ONNX Runtime to ``distribution``: the other builds go first (one folder).

    Args:
        distribution: the build to install (``onnxruntime-gpu``, ``onnxruntime-directml``, ...).
        extra: the mnist-edge extra that brings it (:data:`ORT_BUILDS`), if one does.
    """
    others = [d for d in installed_ort_distributions() if d != distribution]
    if extra is not None:
        get = f"{install_advice(extra)}, which brings {distribution}"
    else:
        get = f"pip install {distribution} (no mnist-edge extra brings it)"
    if not others:
        return get
    return (
        f"uninstall {' and '.join(others)} first (`pip uninstall -y {' '.join(others)}`; "
        f"ONNX Runtime builds share one module folder), then {get}"
    )


def require_extras(command: str, *extras: str) -> None:
    """Raise :class:`MissingExtraError` naming the extras ``command`` lacks and the fix.

    ``cpu`` stands for "an ONNX Runtime build": ``onnxruntime-gpu`` and
    ``onnxruntime-openvino`` provide the same module and satisfy it.
    """
    lacking = [e for e in extras if missing_modules(e)]
    if lacking:
        modules = sorted({m for e in lacking for m in missing_modules(e)})
        raise MissingExtraError(
            f"{command} needs {', '.join(modules)}, which are not installed; "
            f"{install_advice(*lacking)}"
        )


def installed_ort_distributions() -> list[str]:
    """The ONNX Runtime distributions installed here (see :data:`ORT_DISTRIBUTIONS`)."""
    found = []
    for name in ORT_DISTRIBUTIONS:
        try:
            importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        found.append(name)
    return found


def ort_conflict(distributions: Sequence[str] | None = None) -> str | None:
    """A one-line explanation when several ONNX Runtime distributions are installed, else ``None``.

    The fix keeps the first specialised build found (``onnxruntime-gpu``,
    ``onnxruntime-openvino``, ...): the stock ``onnxruntime`` is the one that
    usually came in by accident, as another package's dependency.
    """
    found = list(installed_ort_distributions() if distributions is None else distributions)
    if len(found) < 2:
        return None
    keep = next(name for name in found if name != "onnxruntime")
    return (
        f"{' and '.join(found)} are all installed; they share one `onnxruntime` module folder, "
        f"so the providers of all but one are missing. Keep one: "
        f"`pip uninstall -y {' '.join(found)} && pip install {keep}`"
    )
