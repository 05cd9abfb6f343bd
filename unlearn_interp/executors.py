"""Where the points of a sweep run: in this process, one after another, or on Ray workers.

An executor maps a task over items and yields ``(index, result)`` as each item finishes, in any
order. :class:`SerialExecutor` runs them here, in order, and lets an exception through exactly as
a plain loop would. :class:`RayExecutor` fans them out over Ray workers (local worker processes by
default, or a cluster at ``address``): the task and the state it captures (a model) go into the
object store once, each worker runs torch with ``threads_per_worker`` threads, a task that raises
or whose worker dies is retried once and logged, and a second failure yields :class:`TaskFailed`
in place of the result, never silently dropped. Ray is an optional dependency
(``pip install -e ".[scale]"``), imported only when a Ray executor runs.

    >>> executor = make_executor("ray", workers=2)  # doctest: +SKIP
    >>> for index, result in executor.run(measure, points):  # doctest: +SKIP
    ...     if isinstance(result, TaskFailed):
    ...         print(points[index], result.error)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, runtime_checkable

from unlearn_interp.errors import UnlearnInterpError

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")
EXECUTORS = ("serial", "ray")  # the kinds make_executor knows
DEFAULT_RAY_WORKERS = 2
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
RAY_MISSING = 'the Ray executor needs Ray: pip install -e ".[scale]" (or pip install "ray>=2.9")'
WORKER_DIED = "worker died"


@dataclass(frozen=True)
class TaskFailed:
    """What a task that failed on every attempt yields in place of its result."""

    error: str  # one sentence: the exception's type and message, or "worker died"
    attempts: int


@runtime_checkable
class Executor(Protocol):
    """Runs a task over items; ``name`` is ``"serial"`` or ``"ray"``."""

    name: str

    def run(
        self, task: Callable[[T], R], items: Sequence[T], desc: str = ""
    ) -> Iterator[tuple[int, R | TaskFailed]]:
        """Yield ``(index into items, result)`` as each item finishes, in any order."""
        ...


class SerialExecutor:
    """In this process, in order; an exception propagates (no retry, no :class:`TaskFailed`).

    >>> list(SerialExecutor().run(str.upper, ["a", "b"]))
    [(0, 'A'), (1, 'B')]
    """

    name = "serial"

    def run(
        self, task: Callable[[T], R], items: Sequence[T], desc: str = ""
    ) -> Iterator[tuple[int, R]]:
        for index, item in enumerate(items):
            yield index, task(item)

    def __repr__(self) -> str:
        return "SerialExecutor()"

    def __enter__(self) -> SerialExecutor:  # as RayExecutor, so callers can always use ``with``
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class RayExecutor:
    """Ray workers: ``workers`` local CPU worker processes, or the cluster at ``address``.

    ``gpus_per_task`` defaults to one when torch sees CUDA (none otherwise); each task runs torch
    with ``threads_per_worker`` threads; a failed task is retried ``retries`` times. Ray starts on
    the first :meth:`run` and stops when it ends, or once for several runs inside ``with``; a Ray
    already initialised by the caller is used and left running.

    >>> with RayExecutor(workers=2) as executor:  # doctest: +SKIP
    ...     results = dict(executor.run(measure, points))
    """

    name = "ray"

    def __init__(
        self,
        workers: int = DEFAULT_RAY_WORKERS,
        address: str | None = None,
        gpus_per_task: float | None = None,
        threads_per_worker: int = 1,
        retries: int = 1,
    ) -> None:
        _check_positive(workers=workers, threads_per_worker=threads_per_worker)
        if retries < 0 or (gpus_per_task is not None and gpus_per_task < 0):
            raise UnlearnInterpError("retries and gpus_per_task must not be negative")
        self.workers = workers
        self.address = address
        self.gpus_per_task = gpus_per_task
        self.threads_per_worker = threads_per_worker
        self.retries = retries
        self._started = False  # whether this executor called ray.init (and so shuts it down)

    def __repr__(self) -> str:
        where = f"address={self.address!r}" if self.address else f"workers={self.workers}"
        return f"RayExecutor({where}, threads_per_worker={self.threads_per_worker})"

    def __enter__(self) -> RayExecutor:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> bool:
        """Initialise Ray unless it already is; True when this call started it."""
        ray = import_ray()
        if ray.is_initialized():
            return False
        if self.address:
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(num_cpus=self.workers, include_dashboard=False, log_to_driver=False)
        log.info("started Ray (%s)", self)
        self._started = True
        return True

    def close(self) -> None:
        """Shut Ray down if this executor started it."""
        if self._started:
            import_ray().shutdown()
            self._started = False

    def run(
        self, task: Callable[[T], R], items: Sequence[T], desc: str = ""
    ) -> Iterator[tuple[int, R | TaskFailed]]:
        """Yield ``(index, result or TaskFailed)`` as each item finishes on a worker."""
        started_here = self.start()
        try:
            yield from self._run_started(task, list(items), desc or "task")
        finally:
            if started_here:
                self.close()

    def _run_started(
        self, task: Callable[[T], R], items: list[T], desc: str
    ) -> Iterator[tuple[int, R | TaskFailed]]:
        ray = import_ray()
        remote = ray.remote(_run_one).options(
            num_cpus=1, num_gpus=self._gpus(), max_retries=0, name=desc
        )
        shared = ray.put(task)  # the task and what it captures go to the object store once
        pending = {}

        def submit(index: int, failures: int) -> None:
            ref = remote.remote(shared, items[index], self.threads_per_worker)
            pending[ref] = (index, failures)

        for index in range(len(items)):
            submit(index, 0)
        try:
            while pending:
                [ref], _ = ray.wait(list(pending), num_returns=1)
                index, failures = pending.pop(ref)
                try:
                    yield index, ray.get(ref)
                except ray.exceptions.RayError as err:
                    failure = self._failed(err, index, failures + 1, desc)
                    if failure is None:
                        submit(index, failures + 1)
                    else:
                        yield index, failure
        finally:
            for ref in pending:  # the consumer stopped early
                ray.cancel(ref, force=True)

    def _failed(self, err: Exception, index: int, attempts: int, desc: str) -> TaskFailed | None:
        """Log a failed attempt; the :class:`TaskFailed` once no retry is left (else None)."""
        error = describe_failure(err)
        if attempts <= self.retries:
            log.warning("%s: item %d failed (%s); retrying", desc, index, error)
            return None
        log.error("%s: item %d failed %d times (%s)", desc, index, attempts, error)
        return TaskFailed(error=error, attempts=attempts)

    def _gpus(self) -> float:
        if self.gpus_per_task is not None:
            return self.gpus_per_task
        import torch

        return 1.0 if torch.cuda.is_available() else 0.0


def _run_one(task: Callable[[T], R], item: T, threads: int) -> R:
    """One task on a Ray worker, torch limited to ``threads`` threads."""
    for name in THREAD_ENV_VARS:
        os.environ[name] = str(threads)
    import torch

    torch.set_num_threads(threads)
    return task(item)


def describe_failure(err: BaseException) -> str:
    """One sentence for a failed Ray task: the task's own exception type and message, or
    ``"worker died"`` when its worker process ended."""
    ray = import_ray()
    if isinstance(err, (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError)):
        return WORKER_DIED
    cause = getattr(err, "cause", None)
    if isinstance(err, ray.exceptions.RayTaskError) and isinstance(cause, BaseException):
        err = cause
    message = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {message}" if message else type(err).__name__


def import_ray() -> Any:
    """The ``ray`` module, or one clear error naming the extra that installs it."""
    try:
        import ray
    except ImportError as err:
        raise UnlearnInterpError(RAY_MISSING) from err
    return ray


def make_executor(
    kind: str = "serial", *, workers: int | None = None, address: str | None = None
) -> Executor:
    """The executor of ``kind`` (one of :data:`EXECUTORS`): ``"serial"``, or ``"ray"`` with
    ``workers`` local worker processes (default 2) or the cluster at ``address``. Both are
    context managers: ``with make_executor("ray") as executor:`` starts Ray once for several
    sweeps (and stops it after).

    >>> make_executor("serial")
    SerialExecutor()
    """
    if kind == "serial":
        if workers is not None or address is not None:
            raise UnlearnInterpError("--workers and --ray-address need --executor ray")
        return SerialExecutor()
    if kind == "ray":
        return RayExecutor(workers=workers or DEFAULT_RAY_WORKERS, address=address)
    raise UnlearnInterpError(f"unknown executor {kind!r}; choose one of {', '.join(EXECUTORS)}")


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or value < 1:
            raise UnlearnInterpError(f"{name} must be a positive whole number, not {value!r}")


__all__ = [
    "EXECUTORS",
    "Executor",
    "RayExecutor",
    "SerialExecutor",
    "TaskFailed",
    "describe_failure",
    "import_ray",
    "make_executor",
]
