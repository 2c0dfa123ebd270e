"""Import MindSpore quietly and choose the device.

MindSpore reads its logging and output settings at import time, so they are set here,
before the first ``import mindspore`` anywhere in the package. Every module that needs
MindSpore imports it through :func:`mindspore_module`.
"""

from __future__ import annotations

import importlib
import os
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Callable, TypeVar

DEVICES = ("CPU", "GPU", "Ascend")

_state: dict[str, object] = {}
T = TypeVar("T")


class DeviceUnavailableError(RuntimeError):
    """The requested MindSpore backend is not usable on this machine."""


def cache_dir() -> Path:
    """Per-user cache folder (graph cache, MindSpore compile cache, kernels).

    Where it cannot be made (a read-only HOME on a compute node), a folder in the temporary directory
    serves instead, with a note that names both: the cache only saves time, so it never stops a run.
    """
    root = os.environ.get("CRYSTALPROP_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "crystalprop"
    )
    path = Path(root)
    try:
        path.mkdir(parents=True, exist_ok=True)
        return path
    except OSError as exc:
        fallback = _private_temporary_cache()
        if root not in _unusable_caches:
            _unusable_caches.add(root)
            print(f"note: cannot make the cache folder {root} ({exc.strerror or exc}); using {fallback} instead "
                  "(set CRYSTALPROP_CACHE to a writable folder to keep the cache)", file=sys.stderr)
        return fallback


def _private_temporary_cache() -> Path:
    """``crystalprop-cache-<uid>`` in the temporary directory, made for this user alone (mode 0700); where that
    name is taken by another user or open to others (compiled kernels are loaded from the cache), a new
    folder of this process's own."""
    path = Path(tempfile.gettempdir()) / f"crystalprop-cache-{os.getuid()}"
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        info = path.lstat()
        if path.is_symlink() or info.st_uid != os.getuid() or info.st_mode & 0o077:
            raise PermissionError(f"{path} is not this user's alone")
        return path
    except OSError:
        return Path(tempfile.mkdtemp(prefix="crystalprop-cache-"))


_unusable_caches: set[str] = set()  # cache folders already named in a note


def _quiet_environment() -> None:
    """Silence MindSpore's logs and keep its build files out of the working directory."""
    os.environ.setdefault("GLOG_v", "3")
    os.environ.setdefault("GLOG_logtostderr", "1")
    os.environ.setdefault("MS_OM_PATH", os.path.join(tempfile.gettempdir(), "crystalprop_ms_om"))
    os.environ.setdefault("MS_COMPILER_CACHE_ENABLE", "0")


def disable_compile_cache() -> None:
    """Compile without MindSpore's compile cache from now on in this process."""
    os.environ["MS_COMPILER_CACHE_ENABLE"] = "0"
    os.environ.pop("MS_COMPILER_CACHE_PATH", None)


def first_compile(call: Callable[[], T]) -> T:
    """Run ``call``, the first run of a compiled graph; should it fail with the compile cache on,
    run it again without the cache: a cache must never cost a prediction."""
    try:
        return call()
    except Exception:  # whatever MindSpore raises from a cache it cannot read or write
        if os.environ.get("MS_COMPILER_CACHE_ENABLE") != "1":
            raise
        disable_compile_cache()
        return call()


def mindspore_module() -> ModuleType:
    """Return the imported ``mindspore`` module, importing it quietly the first time."""
    if "ms" not in _state:
        _quiet_environment()
        import mindspore  # noqa: PLC0415  (deliberately lazy: import costs ~2 s)

        _state["ms"] = mindspore
    return _state["ms"]  # type: ignore[return-value]


def prefer_compiled_protobuf() -> None:
    """Let protobuf pick its compiled parser (upb) before MindSpore's import picks the pure-Python one.

    Unless the variable is set, importing MindSpore sets ``PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION``
    to ``python`` (against the memory use of the older 'cpp' parser with huge checkpoints); in
    pure Python, reading the four shipped checkpoints takes 0.2-0.3 s, about twice upb's time.
    Protobuf decides at its first import, so this does nothing once MindSpore is loaded or where
    the user chose an implementation.
    """
    if "mindspore" in sys.modules or os.environ.get("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"):
        return
    importlib.import_module("google.protobuf.internal.api_implementation")  # chooses upb where installed


def set_device(device: str = "CPU", threads: int | None = None) -> None:
    """Select the MindSpore backend in graph mode; fail clearly where it is missing."""
    canonical = {d.lower(): d for d in DEVICES}.get(device.lower())
    if canonical is None:
        raise DeviceUnavailableError(f"unknown device {device!r}: choose one of {', '.join(DEVICES)}")
    ms = mindspore_module()
    if _state.get("device") == canonical:
        return
    if "device" in _state:
        raise DeviceUnavailableError(
            f"device already set to {_state['device']} in this process; cannot switch to {canonical}"
        )
    try:
        ms.set_device(canonical)
        ms.set_context(mode=ms.GRAPH_MODE)
        if canonical != "CPU":
            # Touch the device so a missing driver fails here, not in the middle of a run.
            ms.Tensor([1.0]) + ms.Tensor([1.0])  # noqa: B018
            ms.ops.ones((1,), ms.float32).asnumpy()
    except Exception as exc:  # MindSpore raises RuntimeError/ValueError subclasses here
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DeviceUnavailableError(
            f"MindSpore backend {canonical} is not available on this machine ({first}). "
            "Use --device CPU, or install a MindSpore build for that device."
        ) from None
    if threads:
        ms.set_context(runtime_num_threads=threads)
        _state["threads"] = threads
    _state["device"] = canonical


def ensure_device() -> None:
    """The CPU in graph mode unless :func:`set_device` has chosen already: in MindSpore's default
    PyNative mode a training step never saw the learning rate set before it, so a schedule was
    silently ignored (every step at the first rate)."""
    if "device" not in _state:
        set_device("CPU")


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity where the system reports one (Linux),
    else every core (macOS has no ``os.sched_getaffinity``)."""
    affinity = getattr(os, "sched_getaffinity", None)
    if affinity is not None:
        try:
            return max(1, len(affinity(0)))
        except OSError:
            pass
    return os.cpu_count() or 1


def single_threaded_blas() -> None:
    """Keep numpy's BLAS on one thread in this process unless the user chose otherwise
    (``OPENBLAS_NUM_THREADS``). Takes effect only before numpy's first import, so callers run it
    first thing (``crystalprop.cli.commands`` imports no numpy, which a test checks).

    For ``crystalprop predict``: its reader processes take a core each and the model's fused kernels
    run their own threads, so a BLAS thread pool on top only contends. On 2 cores, 2,000 files with
    the shipped models (numpy engine) spent 16 of 63 CPU seconds in the system (BLAS threads waking
    and sleeping around every small matrix product); on one BLAS thread, 1 s, and 28.5 s of wall time
    instead of 32-35 s.
    """
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def cpu_threads() -> int:
    """Threads a CPU kernel may use: those given to :func:`set_device`, else every usable core."""
    threads = _state.get("threads")
    return int(threads) if threads else usable_cores()
