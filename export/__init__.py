"""mnist_edge.export: PyTorch checkpoint -> validated ONNX files (fp32, int8, edge variants).

Entry points: :func:`mnist_edge.export.pipeline.export_onnx` (the stage),
:func:`mnist_edge.export.artifacts.check_artifacts` (``make parity``), and the
``mnist-export`` command (:mod:`mnist_edge.export.cli`). See ``export/README.md``.
"""
