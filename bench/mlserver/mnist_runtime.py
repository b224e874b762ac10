"""An MLServer runtime for an mnist-edge ONNX file: the peer ``bench_serve.py`` measures against.

Runs inside ``.venv-mlserver`` (``make venv-mlserver``), not in the project's
venv. It does what MLServer's own runtimes do for one tensor in and one out:
decode the request input with MLServer's ``NumpyCodec``, run ONNX Runtime, and
encode the output with the same codec, so the figures are MLServer's path, not
a hand-tuned one. The model file comes from the model settings' ``uri``.
"""

from __future__ import annotations

import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class OnnxDigits(MLModel):
    """One ONNX Runtime session on the CPU provider; ``image`` in, ``probabilities`` out."""

    async def load(self) -> bool:
        path = await get_model_uri(self._settings)
        self._session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = self.decode(payload.inputs[0], default_codec=NumpyCodec)  # (N, 1, 28, 28) float32
        (probabilities,) = self._session.run(None, {self._input: x})  # (N, 10)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=[NumpyCodec.encode_output("probabilities", probabilities)],
        )
