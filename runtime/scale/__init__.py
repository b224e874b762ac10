"""Scale-out batch inference on Ray Data (``mnist-infer --engine ray``).

* :mod:`.engine`: :func:`~.engine.classify_dataset`, the Python API (paths, URIs
  or a Dataset of bytes -> a lazy Dataset of result rows);
* :mod:`.inputs`: input specs -> files to read, and the inputs that already failed;
* :mod:`.stages`: the fused read/decode/classify step (a task or an actor), and the result schema;
* :mod:`.warmup`: worker processes with the model open, before a job runs;
* :mod:`.config`: :class:`~.config.RayConfig` and :class:`~.config.RayEngineError`;
* :mod:`.cli`: the click command ``mnist-infer --engine ray`` hands over to;
  :mod:`.cluster` (joining or starting Ray) and :mod:`.writers` (Parquet, or rows to a file or stdout).

None of them imports Ray at module level (the runtime works without the
``scale`` extra); this file imports nothing, so the CLI stays light.
"""
