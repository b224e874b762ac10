"""mnist_edge.runtime: batched inference with ONNX Runtime (no torch needed).

``classify(["a.png", array], model=None, top_k=0)`` labels pictures in one call
(:func:`mnist_edge.runtime.api.classify`); :class:`~mnist_edge.runtime.classifier.Classifier`
and :class:`~mnist_edge.runtime.stream.Pipeline` are the parts it is made of.
``bundled_model("pixels")`` is the path of a bundled model file
(:func:`mnist_edge.runtime.layout.bundled_model`).
"""

from importlib.metadata import PackageNotFoundError, version

from mnist_edge.runtime.api import classify
from mnist_edge.runtime.layout import bundled_model

try:
    __version__ = version("mnist-edge")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = ["__version__", "bundled_model", "classify"]
