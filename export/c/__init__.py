"""The model as a C99 library for microcontrollers, emitted from an exported ONNX file.

:func:`emit_library` writes one folder (``mnist.h``, ``mnist_model.c`` and the
frame preprocessing) for an fp32 or QDQ int8 file; :func:`export_c` does that,
compiles it with the host's ``cc`` and checks it against ONNX Runtime before
replacing ``artifacts/c/<precision>/`` (``mnist-export --c``). See ``docs/c.md``.
"""

from mnist_edge.export.c.library import CLibrary, emit_library
from mnist_edge.export.c.network import NetworkError

__all__ = ["CLibrary", "NetworkError", "emit_library"]
