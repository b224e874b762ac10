"""mnist_edge.runtime: batched inference with ONNX Runtime (no torch needed)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mnist-edge")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
