"""Versions: policies, labels, polling, retries, config reload, and a hot swap under load (§3)."""

from __future__ import annotations

import asyncio
import os
import time
from argparse import Namespace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from teeserve.serving import Code, ModelRef, ServingError, VersionState
from teeserve.serving._config import ConfigError, ModelConfig, VersionPolicy, parse_model_server_config
from teeserve.serving._core import ServingCore

X = np.random.default_rng(0).random((1, 8, 8), dtype=np.float32)


@pytest.fixture()
def three_versions(tmp_path: Path, make_onnx_model: Any) -> Path:
    base = tmp_path / "digits"
    for v in (1, 2, 3):
        make_onnx_model(base / str(v), scale=float(v))
    (base / "not-a-version").mkdir()
    return base


def _states(loop_thread: Any, core: Any, name: str = "digits") -> dict[int, VersionState]:
    return {s.version: s.state for s in loop_thread.call(lambda: core.model_status(name))}


def _wait(predicate: Any, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


@pytest.mark.parametrize("policy, loaded", [
    (VersionPolicy(), {3}),
    (VersionPolicy("latest", 2), {2, 3}),
    (VersionPolicy("all"), {1, 2, 3}),
    (VersionPolicy("specific", versions=(1, 3)), {1, 3}),
])
def test_version_policies(make_core: Any, loop_thread: Any, three_versions: Path, policy: VersionPolicy,
                          loaded: set[int], digits_reference: Any) -> None:
    c = make_core([ModelConfig("digits", str(three_versions), version_policy=policy)])
    states = _states(loop_thread, c)
    assert set(states) == loaded and set(states.values()) == {VersionState.AVAILABLE}
    assert [s.version for s in loop_thread.call(lambda: c.model_status("digits"))] == sorted(loaded, reverse=True)
    r = loop_thread.run(c.predict(ModelRef("digits"), "", {"images": X}))
    assert r.version == max(loaded)
    ref = digits_reference(X, scale=float(max(loaded)))  # each version has its own weights
    np.testing.assert_allclose(r.outputs["probabilities"], ref["probabilities"], rtol=1e-5, atol=1e-6)
    for v in loaded:
        assert loop_thread.run(c.predict(ModelRef("digits", v), "", {"images": X})).version == v


def test_labels(make_core: Any, loop_thread: Any, three_versions: Path) -> None:
    cfg = ModelConfig("digits", str(three_versions), version_policy=VersionPolicy("specific", versions=(1, 2)),
                      version_labels={"stable": 1, "canary": 2})
    c = make_core([cfg])
    assert loop_thread.run(c.predict(ModelRef("digits", label="stable"), "", {"images": X})).version == 1
    assert loop_thread.run(c.predict(ModelRef("digits", label="canary"), "", {"images": X})).version == 2
    (st,) = loop_thread.call(lambda: c.model_status("digits", label="canary"))
    assert st.version == 2
    assert loop_thread.call(lambda: c.signatures(ModelRef("digits", label="stable")))[1] == 1


def test_label_on_unavailable_version_fails_start(make_core: Any, loop_thread: Any, three_versions: Path) -> None:
    cfg = ModelConfig("digits", str(three_versions), version_labels={"stable": 1})  # latest: only 3 loads
    c = make_core([cfg], start=False)
    with pytest.raises(ServingError) as e:
        loop_thread.run(c.start())
    assert e.value.code == Code.FAILED_PRECONDITION
    assert e.value.message == ("Request to assign label to version 1 of model digits, which is not currently "
                               "available for inference")
    relaxed = make_core([cfg], allow_version_labels_for_unavailable_models=True)
    with pytest.raises(ServingError) as e:  # the label exists but points nowhere servable
        loop_thread.run(relaxed.predict(ModelRef("digits", label="stable"), "", {"images": X}))
    assert (e.value.code, e.value.message) == (Code.NOT_FOUND, "Servable not found for request: Specific(digits, 1)")


def test_polling_picks_up_new_versions_and_unloads_old(make_core: Any, loop_thread: Any, tmp_path: Path,
                                                       make_onnx_model: Any) -> None:
    base = tmp_path / "digits"
    make_onnx_model(base / "1")
    c = make_core(base, file_system_poll_wait_seconds=0.05)
    assert _states(loop_thread, c) == {1: VersionState.AVAILABLE}
    make_onnx_model(tmp_path / "staging" / "2", scale=2.0)
    os.rename(tmp_path / "staging" / "2", base / "2")
    _wait(lambda: _states(loop_thread, c) == {2: VersionState.AVAILABLE, 1: VersionState.END})
    assert loop_thread.run(c.predict(ModelRef("digits"), "", {"images": X})).version == 2


def test_failed_load_is_retried(make_core: Any, loop_thread: Any, tmp_path: Path, make_onnx_model: Any) -> None:
    base = tmp_path / "digits"
    (base / "1").mkdir(parents=True)  # the directory appears before its model file
    c = make_core(base, start=False, max_num_load_retries=200, load_retry_interval_seconds=0.05)
    task = asyncio.run_coroutine_threadsafe(c.start(), loop_thread.loop)  # start, then add the file
    time.sleep(0.3)
    assert not task.done()
    assert _states(loop_thread, c) == {1: VersionState.LOADING}
    make_onnx_model(base / "1")
    task.result(30)
    assert _states(loop_thread, c) == {1: VersionState.AVAILABLE}


def test_hot_swap_under_load_has_zero_failed_requests(make_core: Any, loop_thread: Any, tmp_path: Path,
                                                      make_onnx_model: Any) -> None:
    base = tmp_path / "digits"
    make_onnx_model(base / "1")
    c = make_core(base, file_system_poll_wait_seconds=0.02)
    versions: list[int] = []
    errors: list[BaseException] = []
    swapped_at: list[int] = []
    stop = asyncio.Event()

    async def client() -> None:
        while not stop.is_set():
            try:
                r = await c.predict(ModelRef("digits"), "", {"images": X})
                versions.append(r.version)
            except BaseException as exc:  # noqa: BLE001 - every failure counts
                errors.append(exc)
            await asyncio.sleep(0)

    async def scenario() -> None:
        clients = [asyncio.create_task(client()) for _ in range(6)]
        await asyncio.sleep(0.3)
        make_onnx_model(tmp_path / "staging" / "2", scale=2.0)
        os.rename(tmp_path / "staging" / "2", base / "2")
        deadline = time.monotonic() + 20
        while c.model_status("digits", 1)[0].state != VersionState.END:
            assert time.monotonic() < deadline, "the swap did not finish"
            await asyncio.sleep(0.005)
        swapped_at.append(len(versions))
        await asyncio.sleep(0.3)
        stop.set()
        await asyncio.gather(*clients)

    loop_thread.run(scenario(), timeout=60)
    assert errors == []
    assert versions.count(1) > 10 and versions.count(2) > 10
    # Once version 1 has ended, every request was served by version 2.
    assert set(versions[swapped_at[0]:]) == {2} and len(versions) > swapped_at[0] + 10


def test_reload_config_adds_changes_and_removes_models(make_core: Any, loop_thread: Any, three_versions: Path,
                                                       onnx_model_dir: Path) -> None:
    c = make_core(three_versions)
    assert _states(loop_thread, c) == {3: VersionState.AVAILABLE}
    text = f"""
      model_config_list {{
        config {{ name: "digits" base_path: "{three_versions}" model_platform: "tensorflow"
                  model_version_policy {{ specific {{ versions: 1 versions: 3 }} }}
                  version_labels {{ key: "old" value: 1 }} }}
        config {{ name: "other" base_path: "{onnx_model_dir}" }}
      }}"""
    from tensorflow_serving.config import model_server_config_pb2
    from google.protobuf import text_format

    official = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    loop_thread.run(c.reload_config(official))
    assert _states(loop_thread, c) == {3: VersionState.AVAILABLE, 1: VersionState.AVAILABLE}
    assert loop_thread.run(c.predict(ModelRef("digits", label="old"), "", {"images": X})).version == 1
    assert loop_thread.run(c.predict(ModelRef("other"), "", {"images": X})).version == 1
    assert loop_thread.call(c.model_names) == ["digits", "other"]
    # The new config fully replaces the old one: "digits" goes away.
    loop_thread.run(c.reload_config(f'model_config_list {{ config {{ name: "other" base_path: "{onnx_model_dir}" }} }}'))
    assert loop_thread.call(c.model_names) == ["other"]
    with pytest.raises(ServingError) as e:
        loop_thread.run(c.predict(ModelRef("digits"), "", {"images": X}))
    assert e.value.message == "Servable not found for request: Latest(digits)"
    assert loop_thread.call(c.is_ready)


@pytest.mark.parametrize("text, fragment", [
    ('custom_model_config { type_url: "x" }', "only model_config_list is supported"),
    ('model_config_list { config { name: "a" base_path: "/x" } config { name: "a" base_path: "/y" } }',
     "duplicate model name 'a'"),
    ('model_config_list { config { name: "" base_path: "/x" } }', "model name is empty"),
    ('model_config_list { config { name: "a" } }', "base_path is empty"),
    ('model_config_list { config { name: "a" base_path: "/x" model_platform: "pytorch" } }',
     "unsupported model_platform"),
    ("model_config_list { nonsense: 1 }", "not a text-format ModelServerConfig"),
    ('model_config_list { config { name: "a" base_path: "/x" logging_config { sampling_config { '
     'sampling_rate: 1.0 } } } }', "logging_config is not supported"),
])
def test_bad_configs_are_rejected(core: Any, loop_thread: Any, text: str, fragment: str) -> None:
    with pytest.raises(ServingError) as e:
        loop_thread.run(core.reload_config(text))
    assert e.value.code == Code.INVALID_ARGUMENT and fragment in e.value.message
    with pytest.raises(ConfigError):
        parse_model_server_config(text)
    assert loop_thread.call(core.model_names) == ["digits"]  # the old config still serves


def test_config_file_polling_and_from_flags(loop_thread: Any, tmp_path: Path, onnx_model_dir: Path,
                                            three_versions: Path) -> None:
    cfg = tmp_path / "models.config"
    cfg.write_text(f'model_config_list {{ config {{ name: "a" base_path: "{onnx_model_dir}" }} }}')
    flags = Namespace(model_config_file=str(cfg), model_config_file_poll_wait_seconds=0.05,
                      file_system_poll_wait_seconds=0, enable_batching=False, max_num_load_retries=0)
    c = ServingCore.from_flags(flags)
    loop_thread.run(c.start())
    try:
        assert loop_thread.call(c.model_names) == ["a"]
        cfg.write_text(f'model_config_list {{ config {{ name: "b" base_path: "{three_versions}" }} }}')
        _wait(lambda: loop_thread.call(c.model_names) == ["b"] and loop_thread.call(c.is_ready))
        assert loop_thread.run(c.predict(ModelRef("b"), "", {"images": X})).version == 3
    finally:
        loop_thread.run(c.stop())
    single = ServingCore.from_flags(Namespace(model_name="m", model_base_path=str(onnx_model_dir),
                                              file_system_poll_wait_seconds=0))
    assert single._initial == [ModelConfig("m", str(onnx_model_dir))]
    assert single.options.file_system_poll_wait_seconds == 0 and single.options.enable_model_warmup
    with pytest.raises(ConfigError):
        ServingCore.from_flags(Namespace(model_name="m"))


def test_thread_flags_reach_onnx_runtime(make_core: Any, loop_thread: Any, onnx_model_dir: Path) -> None:
    c = make_core(onnx_model_dir, tensorflow_intra_op_parallelism=1, tensorflow_inter_op_parallelism=1)
    servable = c._models["digits"].versions[1].servable
    opts = servable._session.get_session_options()
    assert (opts.intra_op_num_threads, opts.inter_op_num_threads) == (1, 1)
    c2 = make_core(onnx_model_dir, tensorflow_session_parallelism=2)
    opts = c2._models["digits"].versions[1].servable._session.get_session_options()
    assert opts.intra_op_num_threads == 2


def test_onnx_runs_nodes_in_sequence_unless_parallel_execution_is_asked_for(
        make_core: Any, loop_thread: Any, onnx_model_dir: Path) -> None:
    """The reference deployment's --tensorflow_inter_op_parallelism=2 must not switch ONNX Runtime to
    its parallel executor (ResNet-50 ran 2.4x slower in it); --onnx-execution-mode=parallel does."""
    import onnxruntime as ort

    c = make_core(onnx_model_dir, tensorflow_intra_op_parallelism=2, tensorflow_inter_op_parallelism=2)
    opts = c._models["digits"].versions[1].servable._session.get_session_options()
    assert opts.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert opts.intra_op_num_threads == 2
    c2 = make_core(onnx_model_dir, tensorflow_inter_op_parallelism=2, onnx_parallel_execution=True)
    opts = c2._models["digits"].versions[1].servable._session.get_session_options()
    assert opts.execution_mode == ort.ExecutionMode.ORT_PARALLEL
    assert opts.inter_op_num_threads == 2


def test_reload_with_a_label_on_an_unavailable_version_keeps_the_old_labels(
        make_core: Any, loop_thread: Any, three_versions: Path) -> None:
    cfg = ModelConfig("digits", str(three_versions), version_policy=VersionPolicy("specific", versions=(2, 3)),
                      version_labels={"stable": 2})
    c = make_core([cfg])
    bad = ModelConfig("digits", str(three_versions), version_policy=VersionPolicy("specific", versions=(2, 3)),
                      version_labels={"stable": 1})
    with pytest.raises(ServingError) as e:
        loop_thread.run(c.reload_config([bad]))
    assert e.value.code == Code.FAILED_PRECONDITION and "version 1 of model digits" in e.value.message
    assert loop_thread.run(c.predict(ModelRef("digits", label="stable"), "", {"images": X})).version == 2


def test_from_flags_reads_the_batching_parameters_file(tmp_path: Path, onnx_model_dir: Path) -> None:
    bp = tmp_path / "batching.config"
    bp.write_text("max_batch_size { value: 16 } allowed_batch_sizes: 8 allowed_batch_sizes: 16")
    c = ServingCore.from_flags(Namespace(model_name="m", model_base_path=str(onnx_model_dir), enable_batching=True,
                                         batching_parameters_file=str(bp), tensorflow_intra_op_parallelism=2,
                                         saved_model_tags="serve,gpu"))
    assert c.options.batching is not None and c.options.batching.allowed_batch_sizes == (8, 16)
    assert c.options.intra_op_threads == 2 and c.options.saved_model_tags == ("serve", "gpu")
    bp.write_text("max_batch_size { value: 16 } allowed_batch_sizes: 8")
    with pytest.raises(ConfigError) as e:
        ServingCore.from_flags(Namespace(model_name="m", model_base_path=str(onnx_model_dir), enable_batching=True,
                                         batching_parameters_file=str(bp)))
    assert str(bp) in str(e.value)
