"""Server-side batching: results equal unbatched ones (with padding), queue limits, parameters (§4)."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from teeserve.serving import Code, ModelRef, ServingError
from teeserve.serving._batching import QUEUE_FULL_MESSAGE
from teeserve.serving._config import BatchingOptions, ConfigError, parse_batching_parameters


def _spy(core: Any, delay: float = 0.0) -> list[int]:
    """Record the 0-th dimension of every batch the servable runs (optionally slowing it down)."""
    servable = core._models["digits"].versions[1].servable
    real = servable.run
    sizes: list[int] = []
    lock = threading.Lock()

    def run(sig: str, inputs: Any, aliases: Any) -> Any:
        with lock:
            sizes.append(next(iter(inputs.values())).shape[0])
        if delay:
            time.sleep(delay)
        return real(sig, inputs, aliases)

    servable.run = run
    return sizes


def test_batched_results_equal_unbatched(make_core: Any, loop_thread: Any, onnx_model_dir: Path,
                                         digits_reference: Any) -> None:
    opts = BatchingOptions(max_batch_size=8, batch_timeout_micros=50_000, max_enqueued_batches=100,
                           num_batch_threads=1, allowed_batch_sizes=(2, 4, 8))
    batched = make_core(onnx_model_dir, enable_batching=True, batching=opts)
    plain = make_core(onnx_model_dir)
    sizes = _spy(batched)
    rng = np.random.default_rng(11)
    requests = [rng.random((int(rng.integers(1, 4)), 8, 8), dtype=np.float32) for _ in range(24)]

    async def all_at_once(core: Any) -> list[Any]:
        return await asyncio.gather(*(core.predict(ModelRef("digits"), "", {"images": x}) for x in requests))

    got = loop_thread.run(all_at_once(batched))
    want = loop_thread.run(all_at_once(plain))
    for x, g, w in zip(requests, got, want):
        assert g.outputs["probabilities"].shape == (x.shape[0], 10)
        np.testing.assert_array_equal(g.outputs["classes"], w.outputs["classes"])
        np.testing.assert_allclose(g.outputs["probabilities"], w.outputs["probabilities"], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(g.outputs["probabilities"], digits_reference(x)["probabilities"],
                                   rtol=1e-5, atol=1e-6)
    total_rows = sum(x.shape[0] for x in requests)
    assert len(sizes) < len(requests)  # requests were merged
    assert set(sizes) <= {2, 4, 8}  # and padded to an allowed size
    assert sum(sizes) >= total_rows


def test_single_request_is_padded_and_sliced_back(make_core: Any, loop_thread: Any, onnx_model_dir: Path,
                                                  digits_reference: Any) -> None:
    opts = BatchingOptions(max_batch_size=8, allowed_batch_sizes=(4, 8), num_batch_threads=2)
    c = make_core(onnx_model_dir, enable_batching=True, batching=opts)
    sizes = _spy(c)
    x = np.random.default_rng(2).random((3, 8, 8), dtype=np.float32)
    r = loop_thread.run(c.predict(ModelRef("digits"), "", {"images": x}, ["classes"]))
    assert sizes == [4]
    assert list(r.outputs) == ["classes"]
    np.testing.assert_array_equal(r.outputs["classes"], digits_reference(x)["classes"])


def test_oversize_task_is_invalid_argument(make_core: Any, loop_thread: Any, onnx_model_dir: Path) -> None:
    c = make_core(onnx_model_dir, enable_batching=True, batching=BatchingOptions(max_batch_size=4))
    with pytest.raises(ServingError) as e:
        loop_thread.run(c.predict(ModelRef("digits"), "", {"images": np.zeros((5, 8, 8), np.float32)}))
    assert (e.value.code, e.value.message) == (Code.INVALID_ARGUMENT,
                                               "Task size 5 is larger than maximum input batch size 4")


def test_full_queue_is_unavailable(make_core: Any, loop_thread: Any, onnx_model_dir: Path) -> None:
    opts = BatchingOptions(max_batch_size=2, batch_timeout_micros=0, max_enqueued_batches=2, num_batch_threads=1)
    c = make_core(onnx_model_dir, enable_batching=True, batching=opts)
    _spy(c, delay=0.2)
    x = np.zeros((2, 8, 8), np.float32)  # each request fills a batch by itself

    async def burst() -> list[Any]:
        return await asyncio.gather(*(c.predict(ModelRef("digits"), "", {"images": x}) for _ in range(6)),
                                    return_exceptions=True)

    results = loop_thread.run(burst())
    failures = [r for r in results if isinstance(r, BaseException)]
    # One batch runs, two wait in the queue; the other three are turned away.
    assert len(failures) == 3 and len(results) - len(failures) == 3
    for f in failures:
        assert isinstance(f, ServingError) and (f.code, f.message) == (Code.UNAVAILABLE, QUEUE_FULL_MESSAGE)


def test_timeout_zero_does_not_delay_a_lone_request(make_core: Any, loop_thread: Any, onnx_model_dir: Path) -> None:
    opts = BatchingOptions(max_batch_size=64, batch_timeout_micros=0, num_batch_threads=1)
    c = make_core(onnx_model_dir, enable_batching=True, batching=opts)
    sizes = _spy(c)
    r = loop_thread.run(c.predict(ModelRef("digits"), "", {"images": np.zeros((1, 8, 8), np.float32)}))
    assert r.outputs["classes"].shape == (1,) and sizes == [1]


def test_batching_parameters_file_format() -> None:
    opts = parse_batching_parameters("""
        max_batch_size { value: 32 } batch_timeout_micros { value: 1000 }
        max_enqueued_batches { value: 4 } num_batch_threads { value: 2 }
        allowed_batch_sizes: 8 allowed_batch_sizes: 16 allowed_batch_sizes: 32
    """)
    assert opts == BatchingOptions(32, 1000, 4, 2, (8, 16, 32))
    assert [opts.padded_size(n) for n in (1, 8, 9, 32)] == [8, 8, 16, 32]
    assert parse_batching_parameters("").max_batch_size == 1000
    for bad, fragment in [
        ("max_batch_size { value: 8 } allowed_batch_sizes: 4", "final entry in allowed_batch_sizes must equal"),
        ("max_batch_size { value: 8 } allowed_batch_sizes: 8 allowed_batch_sizes: 4 allowed_batch_sizes: 8",
         "monotonically increasing"),
        ("max_batch_size { value: 0 }", "max_batch_size must be positive"),
        ("max_batch_size: 3", "not a text-format BatchingParameters"),
    ]:
        with pytest.raises(ConfigError) as e:
            parse_batching_parameters(bad, "batching.config")
        assert fragment in str(e.value) and "batching.config" in str(e.value)


def test_per_model_batching_parameters(make_core: Any, loop_thread: Any, tmp_path: Path, onnx_model_dir: Path,
                                       digits_reference: Any) -> None:
    import shutil

    base = tmp_path / "digits"
    shutil.copytree(onnx_model_dir, base)
    (base / "1" / "batching_params.pbtxt").write_text("max_batch_size { value: 6 } allowed_batch_sizes: 6")
    server_wide = BatchingOptions(max_batch_size=64, num_batch_threads=1)
    c = make_core(base, enable_batching=True, batching=server_wide, enable_per_model_batching_parameters=True)
    sizes = _spy(c)
    x = np.random.default_rng(4).random((2, 8, 8), dtype=np.float32)
    r = loop_thread.run(c.predict(ModelRef("digits"), "", {"images": x}))
    assert sizes == [6]  # padded to the version's own allowed size
    np.testing.assert_array_equal(r.outputs["classes"], digits_reference(x)["classes"])
    with pytest.raises(ServingError) as e:
        loop_thread.run(c.predict(ModelRef("digits"), "", {"images": np.zeros((7, 8, 8), np.float32)}))
    assert e.value.message == "Task size 7 is larger than maximum input batch size 6"
    (base / "1" / "batching_params.pbtxt").write_text("max_batch_size { value: 6 } allowed_batch_sizes: 4")
    bad = make_core(base, enable_batching=True, batching=server_wide, enable_per_model_batching_parameters=True)
    (st,) = loop_thread.call(lambda: bad.model_status("digits"))
    assert st.error_code == Code.INVALID_ARGUMENT and "batching_params.pbtxt" in st.error_message


def test_a_refused_task_leaves_the_open_batch_open() -> None:
    """TF Serving's rule: a task that needs a new batch while the queue already holds
    max_enqueued_batches (the open one counted) is refused, and the open batch stays open, so a
    smaller task still joins it (and the full batch runs at once, not at its timeout)."""
    from teeserve.serving._batching import BatchScheduler

    async def main() -> tuple[Any, int]:
        async def submit(fn: Any, *args: Any) -> Any:
            return fn(*args)

        opts = BatchingOptions(max_batch_size=4, batch_timeout_micros=60_000_000, max_enqueued_batches=1,
                               num_batch_threads=1)
        queue = BatchScheduler(opts, submit).queue("m", lambda merged, _aliases: {"y": merged["x"] * 2}, ["y"])
        first = queue.submit({"x": np.ones((3, 1))}, 3)  # opens a batch of 3 rows
        with pytest.raises(ServingError) as refused:
            queue.submit({"x": np.ones((2, 1))}, 2)  # needs a second batch: refused
        assert (refused.value.code, refused.value.message) == (Code.UNAVAILABLE, QUEUE_FULL_MESSAGE)
        assert queue._open is not None and queue._open.size == 3 and not queue._closed
        second = queue.submit({"x": np.full((1, 1), 5.0)}, 1)  # fits: fills the batch, which runs now
        done, _ = await asyncio.wait([first, second], timeout=30)  # (the batch timeout is 60 s)
        assert len(done) == 2
        return second.result(), first.result()["y"].shape[0]

    second, rows = asyncio.run(main())
    assert rows == 3 and second["y"].tolist() == [[10.0]]
