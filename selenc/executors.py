"""Where trials run: worker processes on this machine (`local`) or a `dask.distributed` cluster (`dask`).

Both executors take *tasks* (lists of trials of one attack, `sweep.partition`) and yield each finished task's trials
with their outcomes, in completion order; the engine (`sweep`) caches and orders them. A worker builds the victim model
itself, once per process, on the params' device: no model crosses a process boundary and no process that forks has
touched CUDA, so the same code runs on a CPU laptop, a CUDA machine and a cluster.

Time limits: a task may run `sweep.time_limit_s` × its number of trials. `local` kills an overdue worker process and
starts a new one; `dask` cancels the task and restarts the worker running it (through its nanny). Either way the task's
trials come back as `timeout` outcomes, which are never cached. A worker that dies takes only its task with it.
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait

import torch

from selenc.grid import Trial
from selenc.models import Victim, build_victim, resolve_device
from selenc.results import Outcome
from selenc.settings import Params
from selenc.trial import failure, run_trials

Done = tuple[list[Trial], list[Outcome]]
POLL_S = 0.2  # how often the parent looks at its workers


# --- what a worker runs ------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=2)
def _victim(arch: str, params_json: str, state: str, init: int) -> Victim:
    return build_victim(arch, Params.model_validate_json(params_json), trained=state == "trained", init=init)


def run_task(params: Params, arch: str, trials: list[Trial]) -> list[dict]:
    """Run one task in this process (one torch thread, each victim built once per process); outcomes as dicts. A task's
    trials share their victim and initialisation (`engine.partition`)."""
    torch.set_num_threads(1)
    try:
        victim = _victim(arch, params.model_dump_json(), trials[0].victim, trials[0].init)
    except Exception as exc:  # e.g. data that fail their check: every trial of the task reports it
        return [failure(exc).model_dump()] * len(trials)
    return [o.model_dump() for o in run_trials(trials, params, victim)]


def _lost(trials: list[Trial], status: str, error: str) -> list[Outcome]:
    return [Outcome(status=status, error=error) for _ in trials]


def _timeout(trials: list[Trial], limit: float) -> list[Outcome]:
    what = "trial" if len(trials) == 1 else f"task of {len(trials)} trials"
    return _lost(trials, "timeout", f"{what} exceeded the {limit:.0f} s time limit")


def default_workers(params: Params) -> int:
    """`sweep.workers`, where 0 means one per CPU core, or one device-owning worker when the study runs on CUDA."""
    if params.sweep.workers:
        return params.sweep.workers
    if resolve_device(params.study.device).type == "cuda":  # queries the driver; creates no CUDA context here
        return 1
    return os.cpu_count() or 1


# --- local: spawned worker processes -------------------------------------------------------------------------------
def _watch_parent(parent: int) -> None:
    """End this worker when the process that started it is gone (killed parents leave no orphans computing)."""
    while True:
        if os.getppid() != parent:
            os._exit(1)
        time.sleep(1.0)


def _serve(conn: Connection, parent: int, arch: str, params: Params) -> None:
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    with contextlib.suppress(Exception):  # a victim that cannot be built is reported by every task instead
        _victim(arch, params.model_dump_json(), "untrained", 0)
    conn.send("ready")
    while (trials := conn.recv()) is not None:
        conn.send(run_task(params, arch, trials))


@dataclass
class _Slot:
    proc: multiprocessing.Process
    conn: Connection
    ready: bool = False
    task: list[Trial] | None = None
    started: float = 0.0


class LocalExecutor:
    """Worker processes on this machine, started with `spawn` (CUDA-safe), each serving one task at a time."""

    def __init__(self, params: Params):
        self.params = params
        self.workers = default_workers(params)
        self.context = multiprocessing.get_context("spawn")
        self.slots: list[_Slot] = []
        self.arch: str | None = None

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop the worker processes (they stay up between `run` calls until then)."""
        for slot in self.slots:
            with contextlib.suppress(OSError):
                slot.conn.send(None)
            self._stop(slot)
        self.slots = []

    def _start(self, arch: str) -> _Slot:
        ours, theirs = self.context.Pipe()
        proc = self.context.Process(target=_serve, args=(theirs, os.getpid(), arch, self.params), daemon=True)
        proc.start()
        theirs.close()
        return _Slot(proc, ours)

    @staticmethod
    def _stop(slot: _Slot) -> None:
        if slot.proc.is_alive():
            slot.proc.kill()
        slot.proc.join()
        slot.conn.close()

    def run(self, arch: str, tasks: list[list[Trial]]) -> Iterator[Done]:
        limit = self.params.sweep.time_limit_s
        pending = deque(tasks)
        if self.arch != arch:
            self.close()
            self.arch = arch
        self.slots += [self._start(arch) for _ in range(min(self.workers, len(tasks)) - len(self.slots))]
        slots = self.slots
        finished = False
        try:
            while pending or any(s.task is not None for s in slots):
                for slot in slots:
                    if slot.ready and slot.task is None and pending:
                        slot.task, slot.started = pending.popleft(), time.monotonic()
                        slot.conn.send(slot.task)
                for conn in wait([s.conn for s in slots], timeout=POLL_S):
                    slot = next(s for s in slots if s.conn is conn)
                    try:
                        message = conn.recv()
                    except (EOFError, OSError):
                        continue  # the process died: handled below
                    if message == "ready":
                        slot.ready = True
                    else:
                        done, slot.task = slot.task, None
                        yield done, [Outcome.model_validate(o) for o in message]
                for i, slot in enumerate(slots):
                    overdue = slot.task is not None and time.monotonic() - slot.started > limit * len(slot.task)
                    if slot.proc.is_alive() and not overdue:
                        continue
                    if not slot.ready and not slot.proc.is_alive():
                        raise RuntimeError(f"a sweep worker process failed to start (exit code {slot.proc.exitcode})")
                    self._stop(slot)
                    if slot.task is not None:
                        died = f"worker process died (exit code {slot.proc.exitcode})"
                        yield slot.task, (_timeout(slot.task, limit) if overdue else _lost(slot.task, "error", died))
                    slots[i] = self._start(arch)
            finished = True
        finally:
            if not finished:  # abandoned midway: no worker may go on computing a task nobody reads
                self.close()


# --- dask: a dask.distributed cluster ----------------------------------------------------------------------------
class DaskExecutor:
    """Tasks submitted to the cluster at `sweep.dask_address`, or to a `LocalCluster` of worker processes started here.

    A task's clock starts when the scheduler reports it processing on a worker (workers should run one thread each, as
    the LocalCluster's do, so that processing means running)."""

    def __init__(self, params: Params):
        self.params = params
        self.stack = contextlib.ExitStack()
        self._client = None

    def __enter__(self) -> DaskExecutor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the client (and the LocalCluster it started); it stays up between `run` calls until then."""
        self.stack.close()
        self._client = None

    @contextlib.contextmanager
    def client(self):
        import dask
        from distributed import Client, LocalCluster

        address = self.params.sweep.dask_address
        if address is not None:
            with Client(address) as client:
                yield client
            return
        workers = self.params.sweep.dask_workers or default_workers(self.params)
        # one task per worker at a time: the scheduler's "processing" then means running, which the time limit reads
        with (
            dask.config.set({"distributed.scheduler.worker-saturation": 1.0}),
            LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=40
            ) as cluster,
            Client(cluster) as client,
        ):
            yield client

    def run(self, arch: str, tasks: list[list[Trial]]) -> Iterator[Done]:
        limit = self.params.sweep.time_limit_s
        run_id = uuid.uuid4().hex[:8]
        if self._client is None:
            self._client = self.stack.enter_context(self.client())
        client = self._client
        futures = {
            client.submit(run_task, self.params, arch, trials, key=f"selenc-{arch}-{run_id}-{i}", pure=False): trials
            for i, trials in enumerate(tasks)
        }
        started: dict[str, float] = {}
        while futures:
            time.sleep(POLL_S)
            now = time.monotonic()
            running = {key: worker for worker, keys in client.processing().items() for key in keys}
            for future, trials in list(futures.items()):
                if future.done():
                    del futures[future]
                    if future.status == "finished":
                        yield trials, [Outcome.model_validate(o) for o in future.result()]
                    else:
                        error = f"dask task failed: {type(future.exception()).__name__}: {future.exception()}"
                        yield trials, _lost(trials, "error", error)
                    continue
                if future.key in running:
                    started.setdefault(future.key, now)
                    if now - started[future.key] > limit * len(trials):
                        del futures[future]
                        future.cancel()
                        with contextlib.suppress(Exception):  # no nanny: the task runs on, its result is dropped
                            client.restart_workers([running[future.key]])
                        yield trials, _timeout(trials, limit)


EXECUTORS = {"local": LocalExecutor, "dask": DaskExecutor}
