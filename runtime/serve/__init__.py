"""mnist_edge.runtime.serve: the model over HTTP (Open Inference Protocol, dynamic batching).

Needs the ``serve`` extra (FastAPI, uvicorn). Modules: :mod:`.protocol` (the
wire format), :mod:`.batcher` (dynamic batching), :mod:`.service` (the model
behind the routes), :mod:`.app` (the FastAPI app), :mod:`.cli` (``mnist-serve``).
This package itself imports nothing heavy, so ``mnist_edge.runtime`` stays free
of web frameworks.
"""
