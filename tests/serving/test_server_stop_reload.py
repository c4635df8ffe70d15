"""A model-config reload still running when the server stops.

The stop ends it (its loads are abandoned, its caller gets UNAVAILABLE "server is stopping") and
every model manager it made, replaced or removed is closed, holding no servable, before the stop
returns; a reload asked for once the stop has begun is refused the same way and makes nothing.
Reloads over gRPC (an in-process ModelServer on 127.0.0.1 with a real client, both gRPC servers),
from ``--model_config_file`` polling, and one queued behind another (the serving core itself).

The reloaded model loads slowly for real: its warmup file replays the slow Loop model for about
30 s, far longer than any stop here may take. Which managers the core made is recorded by a
subclass of the real ``ModelManager`` that only notes each instance.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc

from teeserve.serving import Code, ModelRef, ServingError, VersionState
from teeserve.serving import _core
from teeserve.serving._config import ModelConfig, ServingOptions
from teeserve.serving._core import ServingCore
from teeserve.serving._flags import parse_serve_args
from teeserve.serving._manager import ModelManager
from teeserve.serving._server import ModelServer

from test_server import free_port, write_slow_loading_model  # same folder, as test_workers.py does

IMAGES = np.zeros((1, 8, 8), np.float32)


@pytest.fixture(scope="module")
def slow_loading_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_slow_loading_model(tmp_path_factory.mktemp("slow-loading") / "slow", 0.2, 150)


@pytest.fixture()
def managers(monkeypatch: pytest.MonkeyPatch) -> list[ModelManager]:
    """Every ModelManager the serving core makes during the test."""
    made: list[ModelManager] = []

    class Recorded(ModelManager):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(_core, "ModelManager", Recorded)
    return made


@pytest.fixture()
def onnx_servables(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every ONNX servable built during the test (a session is built once a load reaches it)."""
    from teeserve.serving.backends import _onnx

    made: list[Any] = []
    init = _onnx.OnnxServable.__init__

    def recorded(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(_onnx.OnnxServable, "__init__", recorded)
    return made


def assert_all_closed(managers: list[ModelManager]) -> None:
    for m in managers:
        assert m._closed, f"the manager of {m.name} ({m.config.base_path}) was never closed"
        held = {v: e.state.name for v, e in m.versions.items()
                if e.servable is not None or e.state != VersionState.END}
        assert not held, f"{m.name} ({m.config.base_path}) still holds versions {held}"


async def wait_until(predicate: Callable[[], object], what: str, timeout: float = 60) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        if loop.time() > end:
            raise AssertionError(f"not reached within {timeout}s: {what}")
        await asyncio.sleep(0.02)


def loading(core: ServingCore, name: str) -> bool:
    try:
        return any(s.state == VersionState.LOADING for s in core.model_status(name))
    except ServingError:
        return False


def other_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]


def config_text(models: dict[str, Path]) -> str:
    configs = " ".join(f'config {{ name: "{n}" base_path: "{p}" model_platform: "tensorflow" }}'
                       for n, p in models.items())
    return f"model_config_list {{ {configs} }}"


def reload_over_grpc(port: int, models: dict[str, Path]) -> tuple[grpc.StatusCode, str]:
    req = model_management_pb2.ReloadConfigRequest()
    for name, path in models.items():
        c = req.config.model_config_list.config.add()
        c.name, c.base_path, c.model_platform = name, str(path), "tensorflow"
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        try:
            resp = model_service_pb2_grpc.ModelServiceStub(ch).HandleReloadConfigRequest(req, timeout=120)
        except grpc.RpcError as exc:
            return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, resp.status.error_message


@pytest.mark.parametrize("grpc_server", ["aio", "threads"])
def test_drain_during_a_grpc_reload_ends_it_and_closes_every_manager_it_made(
        onnx_model_dir: Path, slow_loading_dir: Path, managers: list[ModelManager], grpc_server: str) -> None:
    """The reload replaces "digits" (a new manager that would swap in once loaded) and adds "added";
    the drain (SIGTERM's path) comes while both load. --drain-timeout is shorter than the loads:
    before the fix the drain gave up on them and the reload went on after it, leaving managers open."""
    port = free_port()

    async def main() -> tuple[tuple[grpc.StatusCode, str], list[Any]]:
        server = ModelServer(parse_serve_args([
            "--model_name=digits", f"--model_base_path={onnx_model_dir}", f"--port={port}",
            "--host=127.0.0.1", "--file_system_poll_wait_seconds=0", "--drain-timeout=5",
            f"--grpc-server={grpc_server}"]))
        await server.start()
        await wait_until(lambda: server.core.available_versions("digits"), "digits AVAILABLE")
        reload = asyncio.get_running_loop().run_in_executor(
            None, reload_over_grpc, port, {"digits": slow_loading_dir, "added": slow_loading_dir})
        await wait_until(lambda: loading(server.core, "added"), "the reload's loads running")
        await server.drain()
        return await reload, other_tasks()

    (code, details), left = asyncio.run(main())
    assert left == [], f"still running after the drain: {left}"
    assert sorted((m.name, m.config.base_path) for m in managers) == sorted([
        ("digits", str(onnx_model_dir)), ("digits", str(slow_loading_dir)), ("added", str(slow_loading_dir))])
    assert_all_closed(managers)
    assert code == grpc.StatusCode.UNAVAILABLE
    assert details == "server is stopping: the model config reload was cut short and may be partly applied"


def test_stop_during_a_config_file_reload_closes_what_it_made_and_what_it_removed(
        tmp_path: Path, onnx_model_dir: Path, slow_loading_dir: Path, managers: list[ModelManager]) -> None:
    """--model_config_file polling: the new file removes "digits" and adds "slow". Before the fix
    stop() cancelled the reload halfway, after it had taken "digits" out of the model table but
    before it closed it: that manager kept its loaded version for good."""
    cfg = tmp_path / "models.config"
    cfg.write_text(config_text({"digits": onnx_model_dir}))

    async def main() -> tuple[list[str], list[Any]]:
        core = ServingCore.from_config_file(cfg, options=ServingOptions(file_system_poll_wait_seconds=0,
                                                                        max_num_load_retries=0),
                                            poll_wait_seconds=0.05)
        await core.start()
        cfg.write_text(config_text({"slow": slow_loading_dir}))
        await wait_until(lambda: loading(core, "slow"), "the reload's load running")
        await core.stop()
        return core.model_names(), other_tasks()

    names, left = asyncio.run(main())
    assert names == [] and left == [], left
    assert sorted(m.name for m in managers) == ["digits", "slow"]
    assert_all_closed(managers)


def test_reloads_asked_for_once_the_stop_began_are_refused_and_make_nothing(
        onnx_model_dir: Path, slow_loading_dir: Path, managers: list[ModelManager]) -> None:
    """One reload loads slowly, a second waits behind it when stop() is called, a third comes after
    stop() returned: all three fail with UNAVAILABLE, the two later ones without making a manager
    (before the fix the second one ran after stop() and its model stayed loaded)."""

    async def main() -> list[BaseException | None]:
        core = ServingCore([ModelConfig("digits", str(onnx_model_dir))],
                           options=ServingOptions(file_system_poll_wait_seconds=0, max_num_load_retries=0))
        await core.start()
        running = asyncio.create_task(core.reload_config(
            [ModelConfig("digits", str(onnx_model_dir)), ModelConfig("slow", str(slow_loading_dir))]))
        await wait_until(lambda: loading(core, "slow"), "the first reload's load running")
        queued = asyncio.create_task(core.reload_config(
            [ModelConfig("digits", str(onnx_model_dir)), ModelConfig("queued", str(onnx_model_dir))]))
        await asyncio.sleep(0)  # the second one now waits for the first
        await core.stop()
        outcomes: list[BaseException | None] = list(
            await asyncio.gather(running, queued, return_exceptions=True))
        try:
            await core.reload_config([ModelConfig("late", str(onnx_model_dir))])
            outcomes.append(None)
        except ServingError as exc:
            outcomes.append(exc)
        return outcomes

    outcomes = asyncio.run(main())
    assert sorted(m.name for m in managers) == ["digits", "slow"]  # nothing for "queued" or "late"
    assert_all_closed(managers)
    for outcome in outcomes:
        assert isinstance(outcome, ServingError), outcome
        assert outcome.code == Code.UNAVAILABLE and "server is stopping" in outcome.message


def test_once_a_drain_began_reloads_are_refused_while_the_models_still_serve(
        onnx_model_dir: Path, slow_loading_dir: Path, managers: list[ModelManager]) -> None:
    """begin_stop() (the start of a drain, before the grace for in-flight requests): a reload in
    progress ends at once and new ones are refused, but the loaded models answer until stop()."""

    async def main() -> tuple[list[BaseException], int, list[str]]:
        core = ServingCore([ModelConfig("digits", str(onnx_model_dir))],
                           options=ServingOptions(file_system_poll_wait_seconds=0, max_num_load_retries=0))
        await core.start()
        try:
            running = asyncio.create_task(core.reload_config(
                [ModelConfig("digits", str(onnx_model_dir)), ModelConfig("slow", str(slow_loading_dir))]))
            await wait_until(lambda: loading(core, "slow"), "the reload's load running")
            core.begin_stop()
            late = core.reload_config([ModelConfig("late", str(onnx_model_dir))])
            outcomes = list(await asyncio.gather(running, late, return_exceptions=True))
            served = (await core.predict(ModelRef("digits"), "", {"images": IMAGES})).version
            return outcomes, served, core.model_names()
        finally:
            await core.stop()

    outcomes, served, names = asyncio.run(main())
    assert served == 1 and "digits" in names
    assert [(type(o), getattr(o, "code", None)) for o in outcomes] == [(ServingError, Code.UNAVAILABLE)] * 2
    assert sorted(m.name for m in managers) == ["digits", "slow"]
    assert_all_closed(managers)


def test_a_servable_delivered_after_its_load_was_abandoned_is_closed_before_stop_returns(
        tmp_path: Path, onnx_model_dir: Path, onnx_servables: list[Any], managers: list[ModelManager]) -> None:
    """The warmup here is one run of about a second, which nothing can interrupt: the reload stops
    waiting for it and ends, and the servable the loading thread delivers afterwards is closed
    before stop() returns (stop() waits for the loading threads)."""
    made = onnx_servables
    one_run = write_slow_loading_model(tmp_path / "one-run", 1.0, 1)

    async def main() -> BaseException:
        core = ServingCore([ModelConfig("digits", str(onnx_model_dir))],
                           options=ServingOptions(file_system_poll_wait_seconds=0, max_num_load_retries=0))
        await core.start()
        running = asyncio.create_task(core.reload_config(
            [ModelConfig("digits", str(onnx_model_dir)), ModelConfig("slow", str(one_run))]))
        # Its session exists once the load has reached the warmup run.
        await wait_until(lambda: len(made) == 2, "the slow model's warmup running")
        core.begin_stop()
        outcome = (await asyncio.gather(running, return_exceptions=True))[0]
        await core.stop()
        return outcome

    outcome = asyncio.run(main())
    assert isinstance(outcome, ServingError) and outcome.code == Code.UNAVAILABLE
    assert [s._session for s in made] == [None, None], "a servable was left open"
    assert_all_closed(managers)


def test_a_load_a_thread_takes_after_the_stop_reads_and_builds_nothing(
        onnx_model_dir: Path, onnx_servables: list[Any]) -> None:
    """A load queued before the stop can reach a loading thread after it (sync's tasks run later, a
    cancel reaches the executor a loop turn late): it must not read, decrypt and build a session that
    stop() would then wait for, only to close it."""
    from teeserve.serving._manager import LoadError

    built = onnx_servables

    async def main() -> None:
        core = ServingCore([ModelConfig("digits", str(onnx_model_dir))],
                           options=ServingOptions(file_system_poll_wait_seconds=0, max_num_load_retries=0))
        await core.start()
        assert len(built) == 1
        (manager,) = core._managers()
        core.begin_stop()
        with pytest.raises(LoadError) as info:
            manager._load_blocking(str(onnx_model_dir / "1"))
        assert info.value.code == Code.CANCELLED and "the server is stopping" in info.value.message
        await core.stop()

    asyncio.run(main())
    assert len(built) == 1, "a servable was built after the stop began"
