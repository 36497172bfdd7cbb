"""The exceptions of MMSB: one class per error of the Rust crate, all under
:class:`MmsbError`. Classes also derive from the built-in exception a
Python programmer would catch (``KeyError`` for a missing page,
``ValueError`` for bad input, ``OSError`` for I/O), so either catch works.

Every failing call has changed nothing (the crate validates before it
writes), except where a class says otherwise.
"""

from __future__ import annotations

__all__ = [
    "MmsbError",
    "PageNotFoundError",
    "PageExistsError",
    "InvalidDeltaError",
    "InvalidPageError",
    "StaleEpochError",
    "GpuError",
    "GpuMemoryError",
    "NoDeviceError",
    "UnsupportedLocationError",
    "SerializationError",
    "GraphError",
    "GraphCycleError",
    "InvalidEdgeError",
    "FunctionError",
    "RecomputeError",
    "CorruptError",
    "IoError",
    "PoisonedError",
    "InvariantError",
    "ConfigError",
    "StoppedError",
    "NotAStateError",
    "InUseError",
    "PageBorrowedError",
    "TypeLayoutError",
    "ViewReleasedError",
    "ViewsAliveError",
    "GuardThreadError",
]


class MmsbError(Exception):
    """Base class of every MMSB error."""


class PageNotFoundError(MmsbError, KeyError):
    """No page with this id exists (attribute ``page``)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return Exception.__str__(self)


class PageExistsError(MmsbError):
    """A page with this id already exists (attribute ``page``)."""


class InvalidDeltaError(MmsbError, ValueError):
    """An update does not fit its page or is malformed (attribute ``page``,
    or ``None``). The page is unchanged."""


class InvalidPageError(MmsbError, ValueError):
    """A page specification (length, metadata) is not acceptable."""


class StaleEpochError(MmsbError):
    """The page moved on since the epoch an update was built against
    (attributes ``page``, ``expected``, ``actual``): an optimistic check
    failed and nothing was applied."""


class GpuError(MmsbError):
    """A GPU driver call or kernel failed (attribute ``context``)."""


class GpuMemoryError(GpuError, MemoryError):
    """Device memory could not be allocated (``device``, ``requested``)."""


class NoDeviceError(GpuError):
    """No usable GPU."""


class UnsupportedLocationError(MmsbError):
    """The operation is not possible for a page at this location
    (attributes ``op``, ``location``)."""


class SerializationError(MmsbError, ValueError):
    """Bytes could not be encoded or decoded."""


class GraphError(MmsbError):
    """A change of the dependency graph was refused."""


class GraphCycleError(GraphError):
    """An edge would close a cycle (attribute ``cycle``: page ids)."""


class InvalidEdgeError(GraphError):
    """An edge cannot be added or removed (``from_page``, ``to_page``)."""


class FunctionError(GraphError):
    """A recompute function is unknown or registered at another version
    (attribute ``function``)."""


class RecomputeError(GraphError):
    """A recompute function failed (attributes ``page``, ``function``).
    When it was a Python function that raised, that exception is the
    ``__cause__``. Nothing of the propagation was applied."""


class CorruptError(MmsbError):
    """Persistent data failed a check (attribute ``offset`` or ``None``)."""


class IoError(MmsbError, OSError):
    """An I/O operation failed (``errno`` when the OS gave one)."""


class PoisonedError(MmsbError):
    """An earlier log failure poisoned the state: it refuses writes until
    it is reopened."""


class InvariantError(MmsbError):
    """An invariant check found a violation."""


class ConfigError(MmsbError, ValueError):
    """A setting or argument is not valid."""


class StoppedError(MmsbError):
    """The state was stopped (closed)."""


class NotAStateError(MmsbError, FileNotFoundError):
    """A directory is not an MMSB state directory (attribute ``dir``)."""


class InUseError(MmsbError):
    """Another handle holds the state directory (attribute ``dir``)."""


class PageBorrowedError(MmsbError):
    """A change would write a page this thread holds a read guard on
    (attribute ``page``): release the guard first. Nothing changed."""


class TypeLayoutError(MmsbError, ValueError):
    """A typed view does not fit the page (attribute ``page``)."""


class ViewReleasedError(MmsbError):
    """A read guard was used after it was released."""


class ViewsAliveError(MmsbError):
    """A read guard cannot be released while NumPy views or DLPack
    exports of it are alive; delete them first. The guard stays held."""


class GuardThreadError(MmsbError):
    """A read guard was used (or released) on a thread other than the one
    that took it. Its NumPy views may be read on any thread; a guard
    whose last view goes on another thread is released by its own
    thread's next call into the state."""
