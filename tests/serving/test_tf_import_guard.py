"""The guard around ``import tensorflow`` (``backends._tf._without_import_side_writes``): what it changes
during the import, and that it puts everything back. Its effect on a real server is checked at the
system-call level by ``test_server_disk_writes.py``."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from teeserve.serving.backends import _tf


def test_keras_home_holds_keras_default_config() -> None:
    config = json.loads((Path(_tf.KERAS_HOME) / "keras.json").read_text())
    assert config == {"floatx": "float32", "epsilon": 1e-07, "backend": "tensorflow",
                      "image_data_format": "channels_last"}


def test_guard_blocks_optional_imports_and_sets_homes_only_during_the_import(monkeypatch: pytest.MonkeyPatch) -> None:
    # colorsys: a real module that nothing here has imported yet (stands in for matplotlib / sklearn).
    monkeypatch.delitem(sys.modules, "colorsys", raising=False)
    monkeypatch.setattr(_tf, "_KERAS_OPTIONAL", ("json", "colorsys"))
    monkeypatch.delenv("KERAS_HOME", raising=False)
    monkeypatch.setenv("TEST_TMPDIR", "/users/own/tmpdir")
    loaded_json = sys.modules["json"]
    with _tf._without_import_side_writes():
        assert os.environ["KERAS_HOME"] == _tf.KERAS_HOME
        assert os.environ["TEST_TMPDIR"] == "/users/own/tmpdir"  # the user's setting wins
        assert sys.modules["json"] is loaded_json  # already imported: left alone
        with pytest.raises(ImportError):
            import colorsys  # noqa: F401
    assert "KERAS_HOME" not in os.environ
    assert os.environ["TEST_TMPDIR"] == "/users/own/tmpdir"
    assert "colorsys" not in sys.modules
    import colorsys  # importable again  # noqa: F401,F811


def test_guard_keeps_a_users_keras_home_and_restores_after_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "colorsys", raising=False)
    monkeypatch.setattr(_tf, "_KERAS_OPTIONAL", ("colorsys",))
    monkeypatch.setenv("KERAS_HOME", "/users/keras")
    monkeypatch.delenv("TEST_TMPDIR", raising=False)
    with pytest.raises(RuntimeError), _tf._without_import_side_writes():
        assert os.environ["KERAS_HOME"] == "/users/keras"
        assert os.environ["TEST_TMPDIR"].endswith("absl_testing")
        raise RuntimeError("the import failed")
    assert os.environ["KERAS_HOME"] == "/users/keras"
    assert "TEST_TMPDIR" not in os.environ
    assert "colorsys" not in sys.modules
