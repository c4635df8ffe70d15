"""Relayed reloads in a ``--workers`` worker that is starting: those relayed meanwhile are queued and
applied, in the order received, after its models load and before it listens; the last one before a
restart is skipped when --model_config_file changed since (in-process, the worker's ModelServer on
127.0.0.1, no supervisor)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from teeserve._proto import pb
from teeserve.serving._flags import parse_serve_args
from teeserve.serving._server import ModelServer, config_file_digest

from test_server import free_port  # same folder, as test_workers.py does


def _config(base_path: Path, *names: str) -> bytes:
    cfg = pb.ModelServerConfig()
    for name in names:
        c = cfg.model_config_list.config.add()
        c.name, c.base_path, c.model_platform = name, str(base_path), "tensorflow"
    return cfg.SerializeToString()


def test_relayed_reloads_queue_while_a_worker_starts_and_apply_before_it_listens(onnx_model_dir: Path) -> None:
    seen_at_up: list[tuple[list[str], int]] = []

    async def main() -> tuple[list[str], bool]:
        server: ModelServer

        def on_up() -> None:
            # What the worker serves at the moment it joins the shared ports.
            seen_at_up.append((sorted(server.core.model_names()), server.grpc_port))

        async def relay(_data: bytes) -> None:  # this worker's own reloads (none in this test)
            raise AssertionError("no reload was sent to this worker")

        server = ModelServer(parse_serve_args(["--model_name=digits", f"--model_base_path={onnx_model_dir}",
                                               f"--port={free_port()}", f"--rest_api_port={free_port()}",
                                               "--host=127.0.0.1", "--file_system_poll_wait_seconds=0"]),
                             reuse_port=True, on_reload=relay, on_up=on_up)
        # Two reloads relayed before the worker's core has started: both wait in its queue.
        first = asyncio.create_task(server.apply_relayed_reload(_config(onnx_model_dir, "digits", "b")))
        second = asyncio.create_task(server.apply_relayed_reload(_config(onnx_model_dir, "digits", "c")))
        await asyncio.sleep(0.05)
        queued = not first.done() and not second.done()
        try:
            await server.start()
            await asyncio.wait_for(asyncio.gather(first, second), 30)
            names = sorted(server.core.model_names())
            ready = bool(server.core.available_versions("c"))
        finally:
            await server.drain()
        assert queued, "a relayed reload returned before the worker's core had started"
        return names, ready

    names, ready = asyncio.run(main())
    # Both were applied in order, before the worker listened: the second config ("c", not "b") is
    # what the worker served from its first connection on.
    assert seen_at_up and seen_at_up[0][0] == ["c", "digits"] and seen_at_up[0][1] > 0
    assert names == ["c", "digits"] and ready


@pytest.mark.parametrize("file_changed", [False, True])
def test_a_restarted_worker_skips_the_last_relayed_reload_when_the_config_file_changed_since(
        tmp_path: Path, onnx_model_dir: Path, file_changed: bool) -> None:
    """The supervisor hands a restarted worker the last relayed reload with the digest of
    --model_config_file at that time. Unchanged file: the reload is the newer config and is applied
    before the worker listens. Changed file: the running workers have applied the file since, so the
    restarted worker keeps the file too (it used to apply the stale reload over it)."""
    config = tmp_path / "models.config"
    config.write_text(f'model_config_list {{ config {{ name: "digits" base_path: "{onnx_model_dir}" '
                      'model_platform: "tensorflow" } }\n')
    digest_then = config_file_digest(str(config))
    if file_changed:
        config.write_text(config.read_text().replace('name: "digits"', 'name: "digits2"'))

    async def main() -> list[str]:
        server = ModelServer(parse_serve_args([f"--model_config_file={config}", f"--port={free_port()}",
                                               "--host=127.0.0.1", "--file_system_poll_wait_seconds=0"]),
                             reuse_port=True, initial_reload=_config(onnx_model_dir, "digits", "b"),
                             initial_reload_file_digest=digest_then)
        try:
            await server.start()
            return sorted(server.core.model_names())
        finally:
            await server.drain()

    assert asyncio.run(main()) == (["digits2"] if file_changed else ["b", "digits"])


def test_config_file_digest() -> None:
    assert config_file_digest("") is None
    assert config_file_digest("/nonexistent/models.config") is None
