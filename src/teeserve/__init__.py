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

import os as _os

# ONNX Runtime (1.32 here, Linux included) records telemetry events: the model's graph name and
# opsets, run counts and durations per batch size, error texts, host details. It keeps them in
# ~/.cache/Microsoft/DeveloperTools/.onnxruntime/onnxruntime.db and uploads them whenever it can. On a
# TEE host that file is on the host's disk and the upload goes out through the host's network: off.
# The switch is read when onnxruntime is imported, so it is set here, before any teeserve module can
# import it (``disable_telemetry_events()`` comes too late to stop the file), and it is forced, not a
# default a stray environment could undo. Worker processes inherit it.
_os.environ["ORT_DISABLE_TELEMETRY"] = "1"

from ._errors import TeeserveError  # noqa: E402

__version__ = "0.1.0"
__all__ = ["TeeserveError", "__version__"]
