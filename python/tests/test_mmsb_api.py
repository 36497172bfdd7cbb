"""The Python API over a CPU state: writes in every form, batches, typed
edits, derived pages, events, errors."""

import faulthandler
import gc
import threading

import numpy as np
import pytest

import mmsb


def test_update_forms(state):
    p = state.create_page(16, name="counters")
    assert state.page_named("counters") == p
    assert state.update(p, np.arange(4, dtype=np.uint32)) == 1
    assert np.array_equal(state.array(p, np.uint32), [0, 1, 2, 3])
    # A dense mask: only the selected bytes change.
    data = np.full(16, 9, dtype=np.uint8)
    mask = np.zeros(16, dtype=bool)
    mask[[1, 5]] = True
    assert state.update(p, data, mask=mask) == 2
    b = state.query(p)
    assert b[1] == 9 and b[5] == 9 and b[0] == 0 and b[4] == 1
    # Sparse runs and a single run at an offset.
    state.update(p, runs=[(0, b"\xaa\xbb"), (14, b"\xcc")])
    state.update(p, b"\x01\x02", offset=8)
    b = state.query(p)
    assert b[0:2] == b"\xaa\xbb" and b[14] == 0xCC and b[8:10] == b"\x01\x02"
    assert state.page_info(p)["epoch"] == 4


def test_bad_input_changes_nothing(state):
    p = state.create_page(8)
    state.update(p, b"\x01" * 8)
    h = state.state_hash()
    with pytest.raises(mmsb.InvalidDeltaError) as e:
        state.update(p, b"\x00" * 9)
    assert e.value.page == p and isinstance(e.value, ValueError)
    with pytest.raises(mmsb.InvalidDeltaError):
        state.update(p, runs=[(7, b"\x00\x00")])
    with pytest.raises(mmsb.InvalidDeltaError):
        state.update(p, b"\x00" * 8, mask=np.ones(7, bool))
    with pytest.raises(TypeError):
        state.update(p, "text")
    with pytest.raises(mmsb.PageNotFoundError) as e:
        state.update(p + 100, b"\x00")
    assert e.value.page == p + 100 and isinstance(e.value, KeyError)
    with pytest.raises(mmsb.ConfigError):
        state.create_page(8, location="tpu")
    assert state.state_hash() == h


def test_expect_epoch(state):
    p = state.create_page(4)
    state.update(p, b"abcd")
    with pytest.raises(mmsb.StaleEpochError) as e:
        state.update(p, b"wxyz", expect_epoch=0)
    assert (e.value.page, e.value.expected, e.value.actual) == (p, 0, 1)
    assert state.update(p, b"wxyz", expect_epoch=1) == 2


def test_batch_atomic_and_optimistic(state):
    a, b = state.create_page(4), state.create_page(4)
    with state.batch() as bt:
        bt.update(a, b"1111")
        bt.update(b, b"2222")
        bt.update(a, b"3333")
    assert bt.epochs == [1, 1, 2]
    assert state.query(a) == b"3333" and state.query(b) == b"2222"
    # One bad update: nothing of the batch is applied.
    h = state.state_hash()
    with pytest.raises(mmsb.InvalidDeltaError):
        with state.batch() as bt:
            bt.update(a, b"4444")
            bt.update(b, b"too long")
    assert state.state_hash() == h
    # A write by someone else after the batch first touched a page.
    with pytest.raises(mmsb.StaleEpochError):
        with state.batch() as bt:
            bt.update(a, b"5555")
            state.update(a, b"6666")
    assert state.query(a) == b"6666" and state.query(b) == b"2222"
    # An exception in the block commits nothing.
    with pytest.raises(RuntimeError):
        with state.batch() as bt:
            bt.update(b, b"7777")
            raise RuntimeError("abandon")
    assert state.query(b) == b"2222"


def test_typed_edit_commits_minimal_delta(state):
    rec = np.dtype([("pos", "<f4", (3,)), ("mass", "<f4")])
    p = state.create_page(rec.itemsize * 4)
    ev = state.events()
    with state.edit(p, rec) as parts:
        parts["mass"][2] = 2.5
    e = [x for x in ev if x.kind == "delta_applied"]
    # Only the bytes of the one f32 that differ from zero are written.
    assert len(e) == 1 and e[0].bytes == np.count_nonzero(np.frombuffer(np.float32(2.5).tobytes(), np.uint8))
    with state.read(p) as g:
        v = g.array(rec)
        assert v["mass"][2] == 2.5 and v["mass"][0] == 0
        del v
    epoch = state.page_info(p)["epoch"]
    with state.edit(p, rec):
        pass
    assert state.page_info(p)["epoch"] == epoch  # nothing changed, nothing committed
    with pytest.raises(mmsb.StaleEpochError):
        with state.edit(p, rec) as parts:
            parts["mass"][0] = 1.0
            state.update(p, runs=[(0, b"\x01")])


def test_read_guard_zero_copy_lifecycle(state):
    p = state.create_page(1 << 20)
    state.update(p, np.full(1 << 20, 7, np.uint8))
    g = state.read(p)
    a1, a2 = g.array(), np.asarray(g)
    # The same memory, no copy, read-only.
    assert a1.__array_interface__["data"][0] == a2.__array_interface__["data"][0]
    assert not a1.flags.writeable and not a1.flags.owndata
    with pytest.raises(ValueError):
        a1[0] = 1
    assert g.exports == 2
    # A write to the guarded page from this thread is refused, not a deadlock.
    with pytest.raises(mmsb.PageBorrowedError):
        state.update(p, b"\x00", offset=0)
    with pytest.raises(mmsb.ViewsAliveError):
        g.release()
    assert not g.released and a1[5] == 7
    del a1, a2
    gc.collect()
    assert g.exports == 0
    g.release()
    g.release()  # twice is fine
    for use in (g.array, g.tobytes, lambda: np.asarray(g)):
        with pytest.raises(mmsb.ViewReleasedError):
            use()
    state.update(p, b"\x00", offset=0)  # the lock is free again


def test_view_keeps_guard_alive(state):
    # Also the proof that a call waiting in Rust has released the GIL: the
    # writer thread waits for the page inside `update` while this thread
    # runs Python; a held GIL would hang here (faulthandler fails it).
    faulthandler.dump_traceback_later(60, exit=True)
    p = state.create_page(64)
    state.update(p, bytes(range(64)))
    a = state.read(p).array()  # the guard object itself is dropped
    gc.collect()
    assert a[63] == 63
    done = []

    def writer():
        state.update(p, b"\xff", offset=0)
        done.append(1)

    t = threading.Thread(target=writer)
    t.start()
    t.join(0.3)
    assert not done  # another thread's write waits for the view
    del a
    gc.collect()
    t.join(10)
    faulthandler.cancel_dump_traceback_later()
    assert done and state.query(p)[0] == 0xFF


def test_context_exit_with_live_view_raises(state):
    p = state.create_page(8)
    with pytest.raises(mmsb.ViewsAliveError):
        with state.read(p) as g:
            keep = g.array()
    del keep
    gc.collect()
    g.release()


def test_derived_pages_with_python_functions(state):
    a, b, s = state.create_page(8), state.create_page(8), state.create_page(8)

    def add(inputs, out):
        out[:] = (inputs[0].view(np.int64) + inputs[1].view(np.int64)).view(np.uint8)

    state.register_function("add", add)
    state.derive(s, "add", [a, b])
    state.update(a, np.array([40], np.int64))
    state.update(b, np.array([2], np.int64))
    assert state.array(s, np.int64)[0] == 42
    assert state.derivation(s) == ("add", 1, [a, b])

    calls = []

    def boom(inputs, out):
        calls.append(1)
        if inputs[0][0] == 13:
            raise ArithmeticError("thirteen")
        out[:] = inputs[0]

    c = state.create_page(8)
    state.register_function("boom", boom)
    state.derive(c, "boom", [a])
    h = state.state_hash()
    with pytest.raises(mmsb.RecomputeError) as e:
        state.update(a, np.array([13], np.int64))
    assert isinstance(e.value.__cause__, ArithmeticError)
    assert "thirteen" in str(e.value) and e.value.function == "boom"
    assert state.state_hash() == h  # nothing changed: not a, not s, not c
    assert state.array(a, np.int64)[0] == 40

    def bad_shape(inputs, out):
        raise ValueError("refuse")

    state.register_function("refuse", bad_shape)
    d = state.create_page(8)
    with pytest.raises(mmsb.RecomputeError):
        state.derive(d, "refuse", [a])
    assert state.derivation(d) is None
    with pytest.raises(mmsb.GraphCycleError) as e:
        state.derive(a, "add", [s, b])
    assert e.value.cycle[0] == e.value.cycle[-1]
    with pytest.raises(mmsb.FunctionError):
        state.derive(d, "missing", [a])
    with pytest.raises(TypeError):
        state.register_function("notcallable", 5)


def test_recompute_runs_without_deadlock_from_threads(state):
    a, s = state.create_page(8), state.create_page(8)

    def copy(inputs, out):
        out[:] = inputs[0]

    state.register_function("copy", copy)
    state.derive(s, "copy", [a])
    errs = []

    def w(i):
        try:
            for k in range(50):
                state.update(a, np.array([i * 1000 + k], np.int64))
        except Exception as e:  # noqa: BLE001
            errs.append(e)

    ts = [threading.Thread(target=w, args=(i,)) for i in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errs
    assert state.query(a) == state.query(s)


def test_events(state):
    ev = state.events()
    p = state.create_page(4)
    state.update(p, b"abcd")
    got = list(ev)
    assert [e.kind for e in got] == ["page_created", "delta_applied"]
    assert got[1].page == p and got[1].epoch == 1 and got[1].source == "user" and got[1].bytes == 4
    assert ev.next(0.01) is None and ev.dropped == 0
    with pytest.raises(AttributeError):
        got[0].epoch


def test_diff_compare(state):
    a, b = state.create_page(8), state.create_page(8)
    state.update(b, b"\x00\x01\x00\x00\x00\x07\x08\x00")
    assert state.compare(a, b) == 3
    assert state.diff(a, b) == [(1, b"\x01"), (5, b"\x07\x08")]
    c = state.create_page(4)
    with pytest.raises(mmsb.InvalidPageError):
        state.diff(a, c)


def test_lifetime_errors(tmp_path):
    d = str(tmp_path / "s")
    with pytest.raises(mmsb.NotAStateError):
        mmsb.open(d, create=False)
    with mmsb.open(d) as s:
        s.create_page(4)
        with pytest.raises(mmsb.InUseError):
            mmsb.open(d)
    with pytest.raises(mmsb.StoppedError):
        s.create_page(4)
    with pytest.raises(mmsb.ConfigError):
        mmsb.open(d, durability="sometimes")
    with mmsb.open(d, create=False, durability="fsync") as s:
        assert s.pages() == [1]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "file").write_text("x")
    with pytest.raises(mmsb.NotAStateError):
        mmsb.open(str(tmp_path / "other"))


def test_hierarchy():
    for name in mmsb.errors.__all__:
        assert issubclass(getattr(mmsb, name), mmsb.MmsbError)
    assert issubclass(mmsb.GraphCycleError, mmsb.GraphError)
    assert issubclass(mmsb.IoError, OSError)


def test_help_reads_well():
    import pydoc

    text = pydoc.render_doc(mmsb.State)
    for name in ("update", "read", "checkpoint", "state_hash", "replay_to", "batch", "gpu_view"):
        assert name in text
    assert "zero-copy" in mmsb.State.read.__doc__ or "without a copy" in mmsb.State.read.__doc__


def test_deferred_propagation_and_control_edges(tmp_path):
    with mmsb.open(str(tmp_path / "s"), propagation="deferred") as s:
        a, d, c = s.create_page(4), s.create_page(4), s.create_page(4)

        def inc(inputs, out):
            out[:] = inputs[0] + 1

        s.register_function("inc", inc)
        s.derive(d, "inc", [a])
        s.propagate()
        s.update(a, b"\x01\x02\x03\x04")
        assert s.is_stale(d) and s.query(d) == b"\x01\x01\x01\x01"
        s.propagate()
        assert not s.is_stale(d) and s.query(d) == b"\x02\x03\x04\x05"
        s.add_edge(a, c, "control")
        s.update(a, b"\x00\x00\x00\x00")
        assert s.is_stale(c)
        s.remove_edge(a, c)
        with pytest.raises(mmsb.InvalidEdgeError):
            s.remove_edge(a, c)
        with pytest.raises(mmsb.ConfigError):
            s.add_edge(a, c, "sideways")
    with pytest.raises(mmsb.ConfigError):
        mmsb.open(propagation="lazy")


def test_metadata_and_pages(state):
    p = state.create_page(4, name="x", meta={"unit": b"m/s"})
    info = state.page_info(p)
    assert info["meta"] == {"name": b"x", "unit": b"m/s"} and info["location"] == "cpu"
    assert state.pages() == [p]
    state.delete_page(p)
    assert state.pages() == [] and state.page_named("x") is None
    with pytest.raises(mmsb.PageNotFoundError):
        state.page_info(p)


def test_guard_across_threads(state):
    p = state.create_page(64)
    state.update(p, bytes(range(64)))
    g = state.read(p)
    a = g.array()
    seen = []

    def other():
        seen.append(int(a[10]))  # views read on any thread
        for use in (g.array, g.release, g.tobytes):
            try:
                use()
            except mmsb.GuardThreadError as e:
                seen.append(type(e).__name__)

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert seen == [10, "GuardThreadError", "GuardThreadError", "GuardThreadError"]
    # The last references (guard and view) go on another thread: the lock
    # is parked for this thread, whose next call releases it.
    box = [g, a]
    del g, a

    def drop():
        box.clear()
        gc.collect()

    t = threading.Thread(target=drop)
    t.start()
    t.join()
    assert state.update(p, b"\x00", offset=0) == 2  # no PageBorrowedError, no wait


def test_stop_checkpoint_bytes(tmp_path):
    def ckpts(d):
        return sorted(p.name for p in (tmp_path / d / "log").glob("*.ckpt"))

    # The default (8 MiB) leaves a small log as it is at close.
    with mmsb.open(str(tmp_path / "a")) as s:
        p = s.create_page(4096)
        for i in range(50):
            s.update(p, bytes([i]) * 64, offset=i * 64)
    assert ckpts("a") == []
    # A low setting checkpoints the same log at close; the next open
    # replays nothing and has every write.
    with mmsb.open(str(tmp_path / "b"), stop_checkpoint_bytes=1024) as s:
        p = s.create_page(4096)
        for i in range(50):
            s.update(p, bytes([i]) * 64, offset=i * 64)
        want = s.array(p).tobytes()
    assert len(ckpts("b")) == 1
    with mmsb.open(str(tmp_path / "b"), create=False) as s:
        assert s.array(p).tobytes() == want
    for bad in (-1, 2**64, 1.5, "1", True):
        with pytest.raises(mmsb.ConfigError):
            mmsb.open(str(tmp_path / "c"), stop_checkpoint_bytes=bad)
