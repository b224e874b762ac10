"""Scale-out batch inference on Ray Data (``mnist-infer --engine ray``).

* :mod:`.engine`: :func:`~.engine.classify_dataset`, the Python API (paths, URIs
  or a Dataset of bytes -> a lazy Dataset of result rows);
* :mod:`.inputs`: input specs -> files to read, and the inputs that already failed;
* :mod:`.stages`: the decode task and the classify actor, and the result schema;
* :mod:`.config`: :class:`~.config.RayConfig` and :class:`~.config.RayEngineError`;
* :mod:`.cli`: the click options and handler ``mnist-infer`` uses.

None of them imports Ray at module level (the runtime works without the
``scale`` extra); this file imports nothing, so the CLI stays light.
"""
