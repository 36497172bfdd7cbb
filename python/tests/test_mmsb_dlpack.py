"""DLPack exports of CPU pages (read-only by convention) and the capsule
protocol."""

import gc

import numpy as np
import pytest

import mmsb
from mmsb import _mmsb


def test_cpu_dlpack_is_the_page_memory(state):
    p = state.create_page(4096)
    state.update(p, np.arange(4096, dtype=np.uint16).astype(np.uint8))
    g = state.read(p)
    assert g.__dlpack_device__() == (1, 0)
    x = np.from_dlpack(g)
    v = g.array()
    assert x.__array_interface__["data"][0] == v.__array_interface__["data"][0]
    assert x.shape == (4096,) and x.dtype == np.uint8 and x[300] == 300 % 256
    assert g.exports == 2
    with pytest.raises(mmsb.ViewsAliveError):
        g.release()
    del x, v
    gc.collect()
    assert g.exports == 0
    g.release()
    with pytest.raises(mmsb.ViewReleasedError):
        g.__dlpack__()


def test_unconsumed_capsule_frees_its_hold(state):
    p = state.create_page(16)
    g = state.read(p)
    cap = g.__dlpack__()
    assert not _mmsb.capsule_consumed(cap) and g.exports == 1
    del cap
    gc.collect()
    assert g.exports == 0
    with pytest.raises(BufferError):
        g.__dlpack__(dl_device=(2, 0))
    with pytest.raises(BufferError):
        g.__dlpack__(copy=True)
    g.release()


def test_gpu_view_of_cpu_page_is_refused(state):
    p = state.create_page(16)
    with pytest.raises(mmsb.UnsupportedLocationError):
        state.gpu_view(p)


def test_gpu_page_without_device(state):
    ok, why = mmsb.gpu_info()
    if ok:
        pytest.skip("a GPU is present: tests/test_mmsb_gpu.py covers GPU pages")
    with pytest.raises(mmsb.NoDeviceError):
        state.create_page(16, location="gpu")
    print(f"no GPU: {why}")
