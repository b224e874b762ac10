"""mnist-edge: train the reference MNIST convnet, export validated ONNX files, run them anywhere.

The installed package's top (``package/__init__.py`` in the repository). Its
parts live in the repository's top-level folders, which ``pyproject.toml`` maps
under this name: ``mnist_edge.runtime`` (``runtime/``: inference, the
torch-free part), ``mnist_edge.train`` (``train/``), ``mnist_edge.export``
(``export/``) and ``mnist_edge.tools`` (``tools/``). One-call classification
is :func:`mnist_edge.runtime.classify`.
"""

from mnist_edge.runtime import __version__

__all__ = ["__version__"]
