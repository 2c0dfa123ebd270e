"""Worker processes that map a function over a stream of jobs and survive their own deaths.

``multiprocessing.Pool.imap`` waits forever for a job whose worker died (killed by the
out-of-memory killer, a segfault in a C extension): the pool starts a new worker but the
job is lost. Here every worker has its own pipe, so the parent knows which jobs each one
holds. A worker answers its jobs one by one, in order, so when it dies the first job it has
not answered is the one it was working on: that job gets ``on_lost(job, reason)`` as its
result, the jobs queued behind it go to another worker, a new worker starts, and the stream
goes on. A worker that holds one job longer than ``hard_limit`` seconds without reporting
progress (:func:`heartbeat`, e.g. after each structure of a long file) is killed the same way.
A worker that dies before it is ready (while importing) is blamed on no job; if that happens
MAX_START_DEATHS times in a row, the pool gives up with an error.

Workers are started with 'spawn' (a fresh interpreter: no MindSpore threads or locks copied
from the parent) but without running the caller's ``__main__`` script again in them
(:func:`crystalprop.utils.spawn.main_script_hidden`).
"""

from __future__ import annotations

import functools
import multiprocessing as mp
import os
import pickle
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, Iterator, Mapping

from crystalprop.utils.spawn import main_script_hidden

CHUNK = 8  # jobs sent to a worker at once; it answers each as soon as it is done
READY = -1  # sequence number of the message a worker sends once it is ready
HEARTBEAT = -2  # sequence number of the message that says the current job is progressing
POLL_S = 0.2  # the dispatcher's longest sleep
MAX_START_DEATHS = 3  # workers that die before answering anything, in a row, before giving up


_beat: Callable[[], None] | None = None  # in a worker: sends a HEARTBEAT to the pool


def heartbeat() -> None:
    """Report that the current job is progressing, which restarts its hard-limit clock; no-op outside a worker."""
    if _beat is not None:
        _beat()


@dataclass
class _Worker:
    """One worker process, its pipe and the (sequence number, job) pairs it holds, oldest first."""

    process: Any
    conn: Connection
    held: deque = field(default_factory=deque)
    ready: bool = False
    since: float = field(default_factory=time.monotonic)  # when its current job started, as far as we know
    broken: bool = False
    killed_for_time: bool = False


def _worker_main(conn: Connection, env: Mapping[str, str], task: bytes) -> None:
    """Worker loop: receive chunks of pickled jobs, answer each with (sequence number, ok, result).

    ``env`` is set before ``task`` (the pickled function and initializer) is unpickled, so that
    the libraries it imports, such as OpenBLAS, read it at load; the parent's environment is
    never written (a replacement worker starts from the dispatcher thread)."""
    global _beat
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop (Ctrl-C included)
    os.environ.update(env)
    func, initializer = pickle.loads(task)
    _beat = functools.partial(conn.send, (HEARTBEAT, True, None))
    if initializer is not None:
        initializer()
    conn.send((READY, True, None))
    while True:
        try:
            chunk = conn.recv()
        except (EOFError, OSError):
            return
        if chunk is None:
            return
        for seq, blob in chunk:
            try:
                answer = (seq, True, func(pickle.loads(blob)))
            except Exception as exc:  # a bug in func must not take the other jobs down with it
                answer = (seq, False, f"{type(exc).__name__}: {exc}")
            conn.send(answer)


def death_reason(exitcode: int | None) -> str:
    """'signal N' for a process killed by a signal, 'exit status N' otherwise."""
    if exitcode is not None and exitcode < 0:
        return f"signal {-exitcode}"
    return f"exit status {exitcode}"


class ResilientPool:
    """``func`` over ``jobs`` in ``workers`` processes; iterating gives the results in job order.

    ``on_lost(job, reason)`` makes the result of a job whose worker died or overran
    ``hard_limit`` seconds on it, or whose ``func`` raised; at most ``max_pending`` results
    wait for the consumer; ``env``: environment variables set in the workers only. The jobs are
    drawn by a thread of this process, so reading starts at construction.
    """

    def __init__(self, func: Callable[[Any], Any], jobs: Iterator[Any], workers: int, *,
                 on_lost: Callable[[Any, str], Any], initializer: Callable[[], None] | None = None,
                 max_pending: int = 2048, hard_limit: float | None = None,
                 env: Mapping[str, str] | None = None) -> None:
        self._func, self._jobs, self._on_lost, self._initializer = func, jobs, on_lost, initializer
        self._env = dict(env or {})
        self._task = pickle.dumps((func, initializer))
        self._max_pending, self._hard_limit = max_pending, hard_limit
        self._ctx = mp.get_context("spawn")
        self._retry: deque = deque()  # (seq, job) of a dead worker, not yet started
        self._results: dict[int, Any] = {}
        self._next_seq = 0  # sequence number of the next new job
        self._consumed = 0  # results handed to the consumer
        self._exhausted = False
        self._error: BaseException | None = None
        self._finished = False
        self._start_deaths = 0
        self._stopping = threading.Event()
        self._cond = threading.Condition()
        self._workers = [self._start_worker() for _ in range(workers)]
        self._thread = threading.Thread(target=self._run, name="crystalprop-readers", daemon=True)
        self._thread.start()

    def _start_worker(self) -> _Worker:
        parent, child = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(target=_worker_main, args=(child, self._env, self._task), daemon=True)
        with main_script_hidden():
            process.start()
        child.close()
        return _Worker(process, parent)

    # --- the dispatcher thread ------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                self._dispatch()
                if self._exhausted and not self._retry and not any(w.held for w in self._workers):
                    break
                wait([w.conn for w in self._workers] + [w.process.sentinel for w in self._workers], POLL_S)
                for k, worker in enumerate(self._workers):
                    self._collect(worker)
                    self._enforce_limit(worker)
                    if worker.broken or not worker.process.is_alive():
                        self._collect(worker)
                        self._workers[k] = self._replace(worker)
        except BaseException as exc:  # handed to the consumer, which raises it
            self._error = exc
        finally:
            with self._cond:
                self._finished = True
                self._cond.notify_all()

    def _next_chunk(self) -> list[tuple[int, Any]]:
        chunk = []
        while len(chunk) < CHUNK and self._retry:
            chunk.append(self._retry.popleft())
        while len(chunk) < CHUNK and not self._exhausted and self._next_seq - self._consumed < self._max_pending:
            try:
                job = next(self._jobs)
            except StopIteration:
                self._exhausted = True
                break
            except BaseException:
                self._exhausted = True
                raise
            chunk.append((self._next_seq, job))
            self._next_seq += 1
        return chunk

    def _dispatch(self) -> None:
        """Send a chunk of jobs to every idle worker."""
        for worker in self._workers:
            if worker.held or worker.broken:
                continue
            chunk = self._next_chunk()
            if not chunk:
                return
            blobs = []
            for seq, job in chunk:
                try:
                    blobs.append((seq, pickle.dumps(job)))
                except Exception as exc:
                    self._store(seq, self._on_lost(job, f"cannot be sent to a reader process ({exc})"))
                    continue
                worker.held.append((seq, job))
            try:
                worker.conn.send(blobs)
            except OSError:  # died before it got them: nobody started them
                worker.broken = True
                self._retry.extendleft(reversed(worker.held))
                worker.held.clear()
            worker.since = time.monotonic()

    def _collect(self, worker: _Worker) -> None:
        """Store every answer the worker has sent."""
        try:
            while not worker.broken and worker.conn.poll():
                seq, ok, result = worker.conn.recv()
                worker.since = time.monotonic()
                if seq == READY:
                    worker.ready = True
                    continue
                if seq == HEARTBEAT:
                    continue
                _, job = worker.held.popleft()
                self._store(seq, result if ok else self._on_lost(job, f"reader error: {result}"))
        except Exception:  # EOF, or a message cut short by the worker's death
            worker.broken = True

    def _enforce_limit(self, worker: _Worker) -> None:
        if self._hard_limit and worker.ready and worker.held and time.monotonic() - worker.since > self._hard_limit:
            worker.killed_for_time = True
            worker.process.kill()

    def _replace(self, worker: _Worker) -> _Worker:
        """Report the job a dead worker was on, requeue the others, start a new worker."""
        worker.process.join(5)
        if worker.process.exitcode is None:
            worker.process.kill()
            worker.process.join()
        worker.conn.close()
        if worker.ready and worker.held:
            seq, job = worker.held.popleft()
            if worker.killed_for_time:
                reason = f"no answer within {self._hard_limit:g} s; reader process stopped"
            else:
                reason = f"reader process died ({death_reason(worker.process.exitcode)}) while preparing this input"
            self._store(seq, self._on_lost(job, reason))
        self._retry.extendleft(reversed(worker.held))
        self._start_deaths = 0 if worker.ready else self._start_deaths + 1
        if self._start_deaths >= MAX_START_DEATHS:
            raise RuntimeError(f"{MAX_START_DEATHS} reader processes in a row died while starting "
                               f"(last: {death_reason(worker.process.exitcode)})")
        return self._start_worker()

    def _store(self, seq: int, result: Any) -> None:
        with self._cond:
            self._results[seq] = result
            self._cond.notify_all()

    # --- the consumer ---------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Any]:
        seq = 0
        while True:
            with self._cond:
                while seq not in self._results and not self._finished:
                    self._cond.wait(POLL_S)
                if seq not in self._results:
                    if self._error is not None:
                        raise self._error
                    return
                result = self._results.pop(seq)
                self._consumed = seq + 1
            yield result
            seq += 1

    def close(self) -> None:
        """Stop the dispatcher and the workers; safe to call more than once."""
        self._stopping.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()
        for worker in self._workers:
            if worker.process.is_alive():
                worker.process.terminate()
        for worker in self._workers:
            worker.process.join(5)
            if worker.process.exitcode is None:
                worker.process.kill()
                worker.process.join()
            worker.conn.close()
        self._workers = []
