"""Helpers shared by the deployment tests (imported as ``_deploy_helpers``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from teeserve.deploy import PythonLayout

REPO = Path(__file__).resolve().parents[2]

#: The layout the server image builds (deploy/docker/server.Dockerfile): Ubuntu's python3.11 and a venv
#: made with --copies at /opt/teeserve/venv.
CONTAINER_PYTHON = PythonLayout(
    argv0="/opt/teeserve/venv/bin/python3",
    entrypoint="/opt/teeserve/venv/bin/python3",
    version="3.11",
    prefix="/opt/teeserve/venv",
    base_prefix="/usr",
    stdlib="/usr/lib/python3.11",
    dynload="/usr/lib/python3.11/lib-dynload",
    site_packages=("/opt/teeserve/venv/lib/python3.11/site-packages",),
    shared_lib=None,
    multiarch="x86_64-linux-gnu",
)


def digits_weights() -> np.ndarray:
    i = np.arange(64, dtype=np.float32)[:, None]
    j = np.arange(10, dtype=np.float32)[None, :]
    return ((((i * 7 + j * 3) % 11) - 5) / 10.0).astype(np.float32)


def onnx_model_bytes() -> bytes:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(digits_weights(), name="W")
    shape = numpy_helper.from_array(np.array([-1, 64], dtype=np.int64), name="flat_shape")
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["images", "flat_shape"], ["flat"]),
         helper.make_node("MatMul", ["flat", "W"], ["scores"])],
        "digits",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 8, 8])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 10])],
        initializer=[w, shape],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="teeserve-tests")
    model.ir_version = 8
    return model.SerializeToString()
