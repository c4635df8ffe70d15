"""teeserve: confidential AI inference.

Serve a proprietary model on a host you do not control (Intel SGX with Gramine, Intel TDX, or a
simulated TEE on a laptop) so that neither the host nor its operator ever sees the model, the TLS
keys or the traffic. One package, one sub-package per concern:

- ``teeserve.pf``          Gramine protected files (the encrypted-model format) and wrap keys
- ``teeserve.tlsmaterial`` CA, server and client certificates; TensorFlow Serving's ``ssl.cfg``
- ``teeserve.models``      the demo models and model conversion (frozen graph, SavedModel, ONNX)
- ``teeserve.attest``      evidence providers, quotes, RA-TLS, DCAP verification, policy
- ``teeserve.provision``   Gramine's secret-provisioning protocol
- ``teeserve.broker``      the attestation-gated key broker
- ``teeserve.serving``     the TensorFlow-Serving-compatible inference server
- ``teeserve.client``      predict and benchmark clients
- ``teeserve.cli``         the ``teeserve`` command (a thin shell over the above)
"""

from __future__ import annotations

from ._errors import TeeserveError

__version__ = "0.1.0"
__all__ = ["TeeserveError", "__version__"]
