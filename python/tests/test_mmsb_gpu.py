"""GPU pages through DLPack: PyTorch, CuPy and JAX see the page's device
memory itself, and a PyTorch kernel's writes committed with
`State.commit_view` are logged exactly and replay on the CPU to the same
state hash.

Runs under pytest, or alone (`python python/tests/test_mmsb_gpu.py`, which is
how scripts/gpu-check.sh runs it on a machine without pytest). Every test
skips, printing why, when CUDA or the library it needs is absent."""

import os
import sys
import tempfile
import time
import unittest

import numpy as np

import mmsb

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


def need_gpu():
    ok, why = mmsb.gpu_info()
    if not ok:
        raise unittest.SkipTest(f"no CUDA device: {why}")


def need_torch():
    need_gpu()
    try:
        import torch
    except ImportError as e:
        raise unittest.SkipTest(f"torch not importable: {e}")
    if not torch.cuda.is_available():
        raise unittest.SkipTest("torch sees no CUDA device")
    return torch


def gpu_state(d):
    return mmsb.open(os.path.join(d, "state"), durability="none")


def test_torch_sees_the_device_memory():
    torch = need_torch()
    with tempfile.TemporaryDirectory() as d, gpu_state(d) as s:
        p = s.create_page(1 << 20, location="gpu")
        s.update(p, np.arange(1 << 20, dtype=np.uint32).astype(np.uint8))
        view = s.gpu_view(p)
        assert view.__dlpack_device__() == (2, 0)
        t = torch.from_dlpack(view)
        assert t.device.type == "cuda" and t.dtype == torch.uint8 and t.shape == (1 << 20,)
        assert t.data_ptr() == view.data_ptr, "torch made a copy"
        assert bytes(t.cpu().numpy()) == s.query(p)
        # A write through MMSB is seen by the tensor (same memory).
        s.update(p, b"\x7f", offset=5)
        torch.cuda.synchronize()
        assert int(t[5]) == 0x7F


def test_torch_kernel_write_committed_exactly_and_replayed():
    torch = need_torch()
    with tempfile.TemporaryDirectory() as d:
        with gpu_state(d) as s:
            n = 1 << 16
            p = s.create_page(n, location="gpu")
            s.update(p, np.full(n, 3, np.uint8))
            view = s.gpu_view(p)
            before = np.frombuffer(s.query(p), np.uint8).copy()
            t = torch.from_dlpack(view)
            ev = s.events()
            t[100:200] = 3  # the same bytes: not a change
            t[1000:1064] += 1
            t[5000] = 42
            f = t.view(torch.float32)
            f[4000:4010] = 1.5
            after_torch = t.cpu().numpy().copy()
            e = s.commit_view(view)
            assert e == 2
            changed = int(np.count_nonzero(before != after_torch))
            applied = [x for x in ev if x.kind == "delta_applied"]
            assert len(applied) == 1 and applied[0].bytes == changed, (applied, changed)
            assert s.commit_view(view) is None  # nothing new
            t[7] = 9
            assert s.commit_view(view) == 3
            live = s.state_hash()
            hist = s.history(p)
            assert np.array_equal(np.frombuffer(hist[-2].bytes, np.uint8), after_torch)
        # The log replayed on the CPU gives the same state.
        assert mmsb.replay_to(os.path.join(d, "state")).state_hash == live
        with mmsb.open(os.path.join(d, "state"), create=False) as s:
            assert s.state_hash() == live


def test_commit_refuses_after_an_mmsb_write():
    torch = need_torch()
    with tempfile.TemporaryDirectory() as d, gpu_state(d) as s:
        p = s.create_page(256, location="gpu")
        view = s.gpu_view(p)
        t = torch.from_dlpack(view)
        s.update(p, b"\x01", offset=0)
        t[9] = 9
        try:
            s.commit_view(view)
        except mmsb.StaleEpochError:
            pass
        else:
            raise AssertionError("a commit after another write must be refused")


def test_view_without_capture_cannot_commit():
    need_gpu()
    with tempfile.TemporaryDirectory() as d, gpu_state(d) as s:
        p = s.create_page(64, location="gpu")
        view = s.gpu_view(p, capture=False)
        assert view.epoch is None
        try:
            s.commit_view(view)
        except mmsb.ConfigError:
            pass
        else:
            raise AssertionError("capture=False must refuse commit")


def test_export_outlives_page_deletion():
    torch = need_torch()
    with tempfile.TemporaryDirectory() as d, gpu_state(d) as s:
        p = s.create_page(4096, location="gpu")
        s.update(p, np.full(4096, 5, np.uint8))
        t = torch.from_dlpack(s.gpu_view(p, capture=False))
        s.delete_page(p)
        assert int(t.sum()) == 5 * 4096  # the memory is still held by the tensor


def test_cupy_sees_the_device_memory():
    need_gpu()
    try:
        import cupy
    except ImportError as e:
        raise unittest.SkipTest(f"cupy not importable: {e}")
    with tempfile.TemporaryDirectory() as d, gpu_state(d) as s:
        p = s.create_page(4096, location="gpu")
        s.update(p, np.arange(4096, dtype=np.uint16).astype(np.uint8))
        view = s.gpu_view(p)
        c = cupy.from_dlpack(view)
        assert c.data.ptr == view.data_ptr, "cupy made a copy"
        assert bytes(cupy.asnumpy(c)) == s.query(p)


def test_jax_sees_the_device_memory():
    need_gpu()
    try:
        import jax
        import jax.dlpack
    except ImportError as e:
        raise unittest.SkipTest(f"jax not importable: {e}")
    if not any(dev.platform == "gpu" for dev in jax.devices()):
        raise unittest.SkipTest("jax sees no GPU")
    with tempfile.TemporaryDirectory() as d, gpu_state(d) as s:
        p = s.create_page(4096, location="gpu")
        s.update(p, np.arange(4096, dtype=np.uint16).astype(np.uint8))
        view = s.gpu_view(p)
        x = jax.dlpack.from_dlpack(view)
        assert np.array_equal(np.asarray(x), np.frombuffer(s.query(p), np.uint8))
        ptr = x.unsafe_buffer_pointer()
        assert ptr == view.data_ptr, f"jax made a copy ({ptr:#x} != {view.data_ptr:#x})"


def test_bench_from_dlpack_constant_time():
    torch = need_torch()
    rows = []
    with tempfile.TemporaryDirectory() as d, gpu_state(d) as s:
        for mib in (1, 64, 512):
            p = s.create_page(mib << 20, location="gpu")
            view = s.gpu_view(p, capture=False)
            torch.from_dlpack(view)
            n = 200
            t0 = time.perf_counter()
            for _ in range(n):
                torch.from_dlpack(view)
            rows.append((mib, (time.perf_counter() - t0) / n * 1e6))
            s.delete_page(p)
    for mib, us in rows:
        print(f"BENCH gpu_from_dlpack_{mib}mib {us:.2f} us")
    ratio = rows[-1][1] / rows[0][1]
    print(f"BENCH gpu_from_dlpack ratio 512MiB/1MiB {ratio:.2f}")
    assert ratio < 3, "from_dlpack time grows with the page: a copy?"


if __name__ == "__main__":
    failed = 0
    for name, fn in sorted(globals().items()):
        if name.startswith("test_") and callable(fn):
            try:
                fn()
                print(f"PASS {name}")
            except unittest.SkipTest as e:
                print(f"SKIP {name}: {e}")
            except Exception as e:  # noqa: BLE001
                failed += 1
                print(f"FAIL {name}: {type(e).__name__}: {e}")
    sys.exit(1 if failed else 0)
