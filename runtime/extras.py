"""Which optional dependencies ("extras") a command needs, checked before it imports them.

``pip install '.[cpu]'`` gives only the runtime; ``mnist-train`` and
``mnist-export`` then fail with one line that names the missing extra instead
of a ``ModuleNotFoundError`` traceback.
"""

from __future__ import annotations

import importlib.util

from mnist_edge.runtime.errors import MnistEdgeError

# extra -> the top-level modules it provides
EXTRAS: dict[str, tuple[str, ...]] = {
    "train": ("torch", "torchvision", "matplotlib"),
    "export": ("torch", "torchvision", "onnx", "onnxscript"),
    "cpu": ("onnxruntime",),
    "serve": ("fastapi", "uvicorn", "python_multipart"),
}


class MissingExtraError(MnistEdgeError, RuntimeError):
    """A command needs packages from an extra that is not installed."""


def missing_modules(extra: str) -> list[str]:
    """Modules of ``extra`` that cannot be imported here."""
    return [m for m in EXTRAS[extra] if importlib.util.find_spec(m) is None]


def require_extras(command: str, *extras: str) -> None:
    """Raise :class:`MissingExtraError` naming the extras ``command`` lacks and the fix.

    ``cpu`` stands for "an ONNX Runtime build": ``onnxruntime-gpu`` provides the
    same module and satisfies it.
    """
    lacking = [e for e in extras if missing_modules(e)]
    if lacking:
        modules = sorted({m for e in lacking for m in missing_modules(e)})
        spec = ",".join(lacking)
        raise MissingExtraError(
            f"{command} needs {', '.join(modules)}, which are not installed; "
            f"install them with: pip install '.[{spec}]' (in the mnist-edge checkout)"
        )
