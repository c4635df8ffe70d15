"""Fixtures for the model toolkit: the digits demo model is made once per session (~15 s)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from teeserve import models


@pytest.fixture(scope="session")
def tf():
    from teeserve.models._layout import import_tensorflow

    return import_tensorflow()


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory) -> models.DemoModel:
    root = tmp_path_factory.mktemp("digits-demo")
    messages: list[str] = []
    model = models.make_digits(root / "models", log=messages.append)
    assert any("held-out accuracy" in m for m in messages)
    return model


@pytest.fixture(scope="session")
def held_out() -> tuple[np.ndarray, np.ndarray]:
    from teeserve.models._digits import load_digits_split

    _, x_test, _, y_test = load_digits_split(0)
    return x_test, y_test


@pytest.fixture(scope="session")
def digits_signatures(tf, digits: models.DemoModel):
    return tf.saved_model.load(str(digits.saved_model_dir)).signatures


@pytest.fixture(scope="session")
def saved_model_proto(tf):
    """A function: SavedModel folder -> its parsed ``saved_model.pb`` (what TensorFlow Serving reads)."""
    from tensorflow.core.protobuf import saved_model_pb2

    def read(path: Path):
        proto = saved_model_pb2.SavedModel()
        proto.ParseFromString((path / "saved_model.pb").read_bytes())
        return proto

    return read
