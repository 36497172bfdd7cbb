"""MMSB from Python: a deterministic, versioned state of byte pages with a
write-ahead log, checkpoints, replay, derived pages and GPU pages.

    >>> import mmsb, numpy as np
    >>> with mmsb.open() as state:                     # a temporary state
    ...     p = state.create_page(16, name="counters")
    ...     state.update(p, np.arange(4, dtype=np.uint32))
    ...     with state.read(p) as view:                 # no copy
    ...         int(view.array(np.uint32)[3])
    1
    3

Every call is one call of the Rust crate ``mmsb`` (made with the GIL
released); errors are the classes of :mod:`mmsb.errors`. The reference is
docs/PYTHON.md.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import errors
from ._mmsb import PageGuard, DeviceView, __version__
from . import _mmsb
from .errors import *  # noqa: F401,F403

__all__ = [
    "open",
    "State",
    "Batch",
    "Event",
    "Events",
    "PageGuard",
    "DeviceView",
    "PageVersion",
    "Provenance",
    "Replayed",
    "gpu_available",
    "gpu_info",
    "errors",
    "__version__",
] + errors.__all__

def _as_bytes(data: Any) -> bytes:
    """The bytes of ``data``: ``bytes`` as is; anything NumPy takes (arrays
    of any dtype, structured arrays, bytearray, memoryview) as its
    C-order bytes."""
    if type(data) is bytes:
        return data
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    if isinstance(data, np.ndarray):
        return np.ascontiguousarray(data).tobytes()
    if isinstance(data, np.generic):
        return data.tobytes()
    raise TypeError(f"page data must be bytes, bytearray, memoryview or a NumPy array, not {type(data).__name__}")


def _payload(data: Any = None, mask: Any = None, runs: Any = None, offset: Optional[int] = None) -> "_mmsb.RawPayload":
    if runs is not None:
        if data is not None or mask is not None or offset is not None:
            raise errors.ConfigError("give runs alone, not with data, mask or offset")
        return _mmsb.RawPayload.sparse([(int(o), _as_bytes(b)) for o, b in runs])
    if data is None:
        raise errors.ConfigError("an update needs data (or runs)")
    b = _as_bytes(data)
    if offset is not None:
        if mask is not None:
            raise errors.ConfigError("give mask or offset, not both")
        return _mmsb.RawPayload.sparse([(int(offset), b)])
    if mask is not None:
        m = np.asarray(mask)
        if m.dtype != np.bool_:
            m = m != 0
        return _mmsb.RawPayload.dense(b, np.ascontiguousarray(m, dtype=np.uint8).tobytes())
    return _mmsb.RawPayload.full(b)


@dataclass(frozen=True)
class Event:
    """One change of the state: ``kind`` (``"page_created"``,
    ``"page_deleted"``, ``"delta_applied"``, ``"edge_added"``,
    ``"edge_removed"``, ``"derived_declared"``, ``"propagation_started"``,
    ``"recomputed"``, ``"propagation_finished"``, ``"checkpoint_written"``)
    and its fields (``page``, ``epoch``, ``source``, ``bytes``, ...)."""

    kind: str
    fields: Dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.fields[name]
        except KeyError:
            raise AttributeError(f"a {self.kind} event has no field {name!r}") from None


class Events:
    """The events of one subscriber, from :meth:`State.events`. Iterating
    yields the events already queued (or arriving within ``timeout``
    seconds of each other) and stops when none come."""

    def __init__(self, raw: "_mmsb.RawSubscription", timeout: float) -> None:
        self._raw = raw
        self.timeout = timeout

    def __iter__(self) -> Iterator[Event]:
        return self

    def __next__(self) -> Event:
        e = self.next(self.timeout)
        if e is None:
            raise StopIteration
        return e

    def next(self, timeout: float = 0.0) -> Optional[Event]:
        """The next event, waiting up to ``timeout`` seconds; ``None`` if
        none came."""
        d = self._raw.recv(timeout)
        if d is None:
            return None
        kind = d.pop("kind")
        return Event(kind, d)

    @property
    def dropped(self) -> int:
        """Events dropped for this subscriber because its queue was full."""
        return self._raw.dropped()


@dataclass(frozen=True)
class PageVersion:
    """One version of a page in the history: the commit's ``lsn``, the
    logical ``time`` after it, the page's ``epoch`` and its ``bytes``."""

    lsn: int
    time: int
    epoch: int
    bytes: bytes

    def array(self, dtype: Any = np.uint8) -> np.ndarray:
        """The bytes as a read-only NumPy array of ``dtype``."""
        return np.frombuffer(self.bytes, dtype=dtype)


@dataclass(frozen=True)
class Provenance:
    """How a page's version came to be: ``steps`` (dicts with ``page``,
    ``epoch``, ``origin`` - ``"user"``, ``"derived"``, ``"created"``,
    ``"replay"``, ``"before_history"`` - and, for derived versions,
    ``function``, ``version`` and ``read``: the parent versions read), the
    asked-for version first; ``str()`` draws the tree."""

    steps: List[Dict[str, Any]]
    truncated: bool
    text: str

    def roots(self) -> List[Dict[str, Any]]:
        """The user writes (and creations) the value rests on."""
        return [s for s in self.steps if s["origin"] != "derived"]

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class Replayed:
    """A state rebuilt from the log: ``pages`` (id to bytes), ``lsn``,
    logical ``time`` and ``state_hash`` (hex, as ``mmsb replay`` prints)."""

    pages: Dict[int, bytes]
    lsn: int
    time: int
    state_hash: str

    def array(self, page: int, dtype: Any = np.uint8) -> np.ndarray:
        """Page ``page`` as a read-only NumPy array of ``dtype``."""
        return np.frombuffer(self.pages[page], dtype=dtype)


def _guard_array(self: PageGuard, dtype: Any = None) -> np.ndarray:
    """A read-only NumPy view of the page's bytes, without a copy, as
    ``dtype`` (default ``uint8``; a structured dtype gives a typed view).
    Valid while it lives: the guard cannot be released before it."""
    a = np.asarray(self._token())
    return a if dtype is None else a.view(dtype)


PageGuard.array = _guard_array  # type: ignore[method-assign]
def _guard_array_protocol(self: PageGuard, dtype: Any = None, copy: Optional[bool] = None) -> np.ndarray:
    a = _guard_array(self, dtype)
    return a.copy() if copy else a


PageGuard.__array__ = _guard_array_protocol  # type: ignore[method-assign]


class Batch:
    """Updates gathered by ``with state.batch() as b:`` and committed
    atomically when the block ends without an exception (all or none).
    Optimistic: the first update of each page is checked against the
    page's epoch when the batch first touched it (or ``expect_epoch``), so
    a write by anyone else in between fails the batch with
    :class:`StaleEpochError`, and nothing is applied."""

    def __init__(self, state: "State") -> None:
        self._state = state
        self._ops: List[Tuple[int, Any, Optional[int]]] = []
        self._seen: Dict[int, int] = {}
        self.epochs: Optional[List[int]] = None

    def update(self, page: int, data: Any = None, *, mask: Any = None, runs: Any = None,
               offset: Optional[int] = None, expect_epoch: Optional[int] = None) -> None:
        """Queue an update (arguments as :meth:`State.update`)."""
        payload = _payload(data, mask, runs, offset)
        base: Optional[int] = None
        if page not in self._seen:
            base = expect_epoch if expect_epoch is not None else self._state.page_info(page)["epoch"]
            self._seen[page] = base
        elif expect_epoch is not None:
            raise errors.ConfigError("expect_epoch applies to a page's first update in a batch")
        self._ops.append((page, payload, base))

    def __len__(self) -> int:
        return len(self._ops)

    def commit(self) -> List[int]:
        """Commit now; returns each update's new epoch."""
        self.epochs = self._state._raw.apply_batch(self._ops) if self._ops else []
        self._ops = []
        return self.epochs


class State:
    """A running MMSB state (from :func:`mmsb.open`). A context manager:
    leaving the ``with`` block stops it (the log synced and closed).

    Pages are named by integer ids. Writes: :meth:`update` (bytes, NumPy
    arrays, a dense mask, sparse runs), :meth:`batch` (atomic), :meth:`edit`
    (a typed view, its changes captured as the smallest delta). Reads:
    :meth:`read` (a zero-copy guard), :meth:`query` (a copy),
    :meth:`array`. Derived pages: :meth:`register_function`,
    :meth:`derive`. History: :meth:`checkpoint`, :meth:`replay_to`,
    :meth:`history`, :meth:`provenance`, :meth:`state_hash`, :meth:`diff`.
    GPU pages: :meth:`gpu_view` (DLPack) and :meth:`commit_view`.
    """

    def __init__(self, raw: "_mmsb.RawState") -> None:
        """Made by :func:`mmsb.open`, not called directly."""
        self._raw = raw

    # -- lifetime ---------------------------------------------------------

    def __enter__(self) -> "State":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Stop the state (the log synced and closed); idempotent. Later
        writes raise :class:`StoppedError`; reads of pages still answer."""
        try:
            self._raw.stop()
        except errors.StoppedError:
            pass

    @property
    def path(self) -> str:
        """The state directory."""
        return str(self._raw.path)

    def sync(self) -> None:
        """Write and fsync every logged change, whatever the durability."""
        self._raw.sync()

    # -- pages ------------------------------------------------------------

    def create_page(self, len: int, name: Optional[str] = None, location: str = "cpu",
                    meta: Optional[Dict[str, bytes]] = None) -> int:
        """Create a zero-filled page of ``len`` bytes and return its id.
        ``location``: ``"cpu"``, ``"gpu"``, ``"gpu:N"`` or ``"unified"``."""
        m = None if meta is None else [(k, _as_bytes(v)) for k, v in meta.items()]
        return self._raw.create_page(len, name, location, m)

    def delete_page(self, page: int) -> None:
        """Delete a page with its edges."""
        self._raw.delete_page(page)

    def page_info(self, page: int) -> Dict[str, Any]:
        """``{"id", "len", "epoch", "location", "meta"}`` of a page."""
        return self._raw.page_info(page)

    def pages(self) -> List[int]:
        """Ids of all pages, ascending."""
        return self._raw.page_ids()

    def page_named(self, name: str) -> Optional[int]:
        """The page created with ``name``, or ``None``."""
        return self._raw.page_named(name)

    # -- writes -----------------------------------------------------------

    def update(self, page: int, data: Any = None, *, mask: Any = None, runs: Any = None,
               offset: Optional[int] = None, expect_epoch: Optional[int] = None) -> int:
        """Write page ``page`` and return its new epoch.

        - ``update(p, data)``: the whole page (``bytes`` or any NumPy array
          whose bytes are the page's length);
        - ``update(p, data, mask=m)``: only the bytes where the boolean
          array ``m`` (one entry per byte) is true;
        - ``update(p, data, offset=k)``: ``data`` at byte ``k``;
        - ``update(p, runs=[(offset, bytes), ...])``: sparse runs.

        With ``expect_epoch`` the write is applied only if the page is at
        that epoch (else :class:`StaleEpochError`). Bad input raises
        :class:`InvalidDeltaError` and changes nothing."""
        if mask is None and runs is None and offset is None and data is not None:
            return self._raw.update_full(page, _as_bytes(data), expect_epoch)
        return self._raw.apply(page, _payload(data, mask, runs, offset), expect_epoch)

    @contextlib.contextmanager
    def batch(self) -> Iterator[Batch]:
        """``with state.batch() as b: b.update(...)``: the updates are
        committed together when the block ends (atomically, with optimistic
        epoch checks; see :class:`Batch`); an exception in the block
        commits nothing."""
        b = Batch(self)
        yield b
        b.commit()

    @contextlib.contextmanager
    def edit(self, page: int, dtype: Any = np.uint8) -> Iterator[np.ndarray]:
        """A typed, writable copy of the page as an array of ``dtype`` (a
        structured dtype for records); when the block ends, the bytes that
        changed are committed as the smallest delta, checked against the
        epoch read (:class:`StaleEpochError` if someone wrote meanwhile).
        A block that changes nothing commits nothing."""
        with self.read(page) as g:
            base = g.epoch
            old = g.tobytes()
        arr = np.frombuffer(bytearray(old), dtype=dtype)
        yield arr
        self._raw.write_diff(page, old, arr.tobytes(), base)

    # -- reads ------------------------------------------------------------

    def read(self, page: int) -> PageGuard:
        """A read guard on a CPU page: ``guard.array(dtype)`` is a
        read-only NumPy view of its bytes without a copy. Use it as a
        context manager (or call ``release()``); views must be gone before
        it is released (else :class:`ViewsAliveError`); a released guard
        raises :class:`ViewReleasedError`. While it is held, writes to the
        page from this thread raise :class:`PageBorrowedError` and writes
        from other threads wait."""
        return self._raw.read(page)

    def query(self, page: int) -> bytes:
        """A copy of the page's bytes (any location)."""
        return self._raw.query(page)

    def array(self, page: int, dtype: Any = np.uint8) -> np.ndarray:
        """A copy of the page as a writable NumPy array of ``dtype``."""
        return np.frombuffer(bytearray(self._raw.query(page)), dtype=dtype)

    # -- derived pages ----------------------------------------------------

    def register_function(self, name: str, fn: Callable[[List[np.ndarray], np.ndarray], None],
                          version: int = 1) -> List[int]:
        """Register a recompute function: ``fn(inputs, out)`` gets the
        parents' bytes as read-only uint8 arrays and writes the derived
        page's bytes into ``out`` (uint8, zeroed, page length). It must be
        deterministic. An exception it raises becomes a
        :class:`RecomputeError` (with it as ``__cause__``) and nothing of
        that change is applied. Returns pages re-declared at this version."""
        if not callable(fn):
            raise TypeError("a recompute function must be callable")

        def call(inputs: List[bytes], out: bytearray) -> None:
            fn([np.frombuffer(b, dtype=np.uint8) for b in inputs], np.frombuffer(out, dtype=np.uint8))

        return self._raw.register_function(name, version, call)

    def derive(self, page: int, function: str, parents: Sequence[int]) -> None:
        """Make ``page`` derived: ``function(parents...)``, recomputed when
        a parent changes. The function runs once first; if it raises,
        nothing changes (:class:`RecomputeError`)."""
        self._raw.declare_derived(page, function, list(parents))

    def add_edge(self, from_page: int, to_page: int, kind: str = "control") -> None:
        """Add a dependency edge (``"data"`` or ``"control"``)."""
        self._raw.add_edge(from_page, to_page, kind)

    def remove_edge(self, from_page: int, to_page: int) -> None:
        """Remove a dependency edge."""
        self._raw.remove_edge(from_page, to_page)

    def propagate(self) -> None:
        """Recompute the derived pages below writes not yet propagated
        (deferred mode; immediate mode does it on each write)."""
        self._raw.propagate()

    def derivation(self, page: int) -> Optional[Tuple[str, int, List[int]]]:
        """``(function, version, parents)`` of a derived page, else ``None``."""
        return self._raw.derivation(page)

    def is_stale(self, page: int) -> bool:
        """Whether the page's bytes may be out of date."""
        return self._raw.is_stale(page)

    # -- events -----------------------------------------------------------

    def events(self, timeout: float = 0.0) -> Events:
        """Subscribe to the event stream (events from now on)."""
        return Events(self._raw.subscribe(), timeout)

    # -- history ----------------------------------------------------------

    def checkpoint(self) -> Dict[str, Any]:
        """Write a checkpoint; returns ``{"lsn", "path", "pages", ...}``."""
        return self._raw.checkpoint()

    def lsn(self) -> int:
        """The LSN of the last commit."""
        return self._raw.lsn()

    def time(self) -> int:
        """Logical time: changes accepted so far."""
        return self._raw.timestamp()

    def state_hash(self) -> str:
        """The state hash as 32 hex digits: what ``mmsb replay`` prints."""
        return self._raw.state_hash()

    def replay_to(self, lsn: Optional[int] = None, time: Optional[int] = None) -> Replayed:
        """The state as of LSN ``lsn`` or logical time ``time``, rebuilt
        from this state's directory (the log is synced first)."""
        self._raw.sync()
        return replay_to(self.path, lsn=lsn, time=time)

    def history(self, page: int) -> List[PageVersion]:
        """Every version of ``page`` in the history on disk, oldest first."""
        self._raw.sync()
        return history(self.path, page)

    def provenance(self, page: int, epoch: Optional[int] = None) -> Provenance:
        """How version ``epoch`` (default: the latest) of ``page`` came to be."""
        self._raw.sync()
        return provenance(self.path, page, epoch)

    def diff(self, old: int, new: int) -> List[Tuple[int, bytes]]:
        """The bytes that turn page ``old`` into page ``new`` (equal
        lengths) as runs ``[(offset, bytes), ...]``."""
        return self._raw.diff_pages(old, new).runs()

    def compare(self, a: int, b: int) -> int:
        """Number of bytes in which two pages of one length differ."""
        return self._raw.compare_pages(a, b)

    def verify(self) -> None:
        """Check the state's invariants (:class:`InvariantError`)."""
        self._raw.verify()

    # -- GPU --------------------------------------------------------------

    def migrate(self, page: int, location: str) -> None:
        """Move a page to ``location``, keeping bytes, epoch and metadata."""
        self._raw.migrate_page(page, location)

    def gpu_view(self, page: int, capture: bool = True) -> DeviceView:
        """The device memory of a GPU page, for ``torch.from_dlpack``,
        ``cupy.from_dlpack`` or ``jax.dlpack.from_dlpack`` (no copy). With
        ``capture`` the page's bytes are also kept on the host (one copy,
        now), so that :meth:`commit_view` can log what a consumer wrote."""
        return self._raw.gpu_view(page, capture)

    def commit_view(self, view: DeviceView) -> Optional[int]:
        """Log the bytes consumers wrote through ``view`` as one user delta
        (waiting for every stream of the device first); returns the new
        epoch, or ``None`` when nothing changed."""
        return view.commit()

    def __repr__(self) -> str:
        return f"mmsb.State({self.path!r}, pages={len(self.pages())})"


_DURABILITY = ("none", "flush", "fsync")


def open(path: Optional[str] = None, durability: str = "flush", create: bool = True,
         propagation: str = "immediate", stop_checkpoint_bytes: Optional[int] = None) -> State:
    """Open (or create) the state in directory ``path``; ``None`` makes a
    temporary state removed when closed. ``durability``: ``"none"``
    (buffered), ``"flush"`` (survives a process crash) or ``"fsync"``
    (survives a power cut). ``create=False`` opens only an existing state
    (:class:`NotAStateError` otherwise). ``propagation``: ``"immediate"``
    or ``"deferred"`` (derived pages recomputed by :meth:`State.propagate`).
    ``stop_checkpoint_bytes``: the log a close leaves for the next start to
    replay before it writes a checkpoint (``None``: the default, 8 MiB;
    ``2**64 - 1``: never)."""
    if durability not in _DURABILITY:
        raise errors.ConfigError(f"unknown durability {durability!r} (none, flush, fsync)")
    if propagation not in ("immediate", "deferred"):
        raise errors.ConfigError(f"unknown propagation {propagation!r} (immediate, deferred)")
    if stop_checkpoint_bytes is not None and (
        isinstance(stop_checkpoint_bytes, bool)
        or not isinstance(stop_checkpoint_bytes, int)
        or not 0 <= stop_checkpoint_bytes < 2**64
    ):
        raise errors.ConfigError(
            f"stop_checkpoint_bytes must be an int from 0 to 2**64 - 1, not {stop_checkpoint_bytes!r}"
        )
    return State(_mmsb.RawState(path, durability, create, propagation == "deferred", stop_checkpoint_bytes))


def replay_to(path: str, lsn: Optional[int] = None, time: Optional[int] = None) -> Replayed:
    """The state in directory ``path`` as of ``lsn``, ``time`` or the end."""
    pages, l, t, h = _mmsb.replay_to(path, lsn, time)
    return Replayed(dict(pages), l, t, h)


def history(path: str, page: int) -> List[PageVersion]:
    """Every version of ``page`` in ``path``'s history, oldest first."""
    return [PageVersion(*v) for v in _mmsb.page_history(path, page)]


def provenance(path: str, page: int, epoch: Optional[int] = None) -> Provenance:
    """The provenance of a page's version in directory ``path``."""
    steps, truncated, text = _mmsb.provenance(path, page, epoch)
    return Provenance(steps, truncated, text)


def gpu_info() -> Tuple[bool, Any]:
    """``(True, info)`` for GPU 0, or ``(False, reason)``."""
    return _mmsb.gpu_probe()


def gpu_available() -> bool:
    """Whether a CUDA device is usable."""
    return _mmsb.gpu_probe()[0]
