"""An ONNX runtime for MLServer 1.7 (there is no ``mlserver-onnx`` package), for the peer benchmark.

MLServer loads it by import path (``"implementation": "mlserver_onnx.OnnxRuntime"`` in
model-settings.json; bench_peers.py puts this folder on PYTHONPATH). It opens the model with the same
onnxruntime settings as teeserve (``_ort.open_session``), decodes inputs and encodes outputs with
MLServer's own NumpyCodec, as a runtime written for MLServer would. Runs inside bench-out/peers/mlserver.
"""

from __future__ import annotations

from _ort import open_session
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class OnnxRuntime(MLModel):
    async def load(self) -> bool:
        self._session = open_session(await get_model_uri(self.settings))
        self._inputs = [i.name for i in self._session.get_inputs()]
        self._outputs = [o.name for o in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feed = {inp.name: NumpyCodec.decode_input(inp) for inp in payload.inputs}
        wanted = [o.name for o in payload.outputs] if payload.outputs else self._outputs
        values = self._session.run(wanted, feed)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            id=payload.id,
            outputs=[NumpyCodec.encode_output(name, value) for name, value in zip(wanted, values)],
        )
