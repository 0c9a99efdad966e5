"""Ray: the one module of qsweep that imports ray.

Each trial runs as a Ray task that asks for its GPUs and CPUs. A trial on GPUs runs in a worker
process of its own (``max_calls=1``): when the trial ends the process exits and its GPU memory
returns to the pool. A trial that asks for no GPU runs in a worker process that Ray keeps for
the next such trial: it has no GPU memory to return, and on a small CPU machine the imports of
a fresh process (torch, transformers, peft, bitsandbytes, lm-eval, MLflow: about 17 s on 2
cores) cost more than a short trial's training. Ray retries a task whose process died
(killed, out of host memory, node lost) up to ``retries`` times; the trial then resumes from
its checkpoint. Exceptions inside a trial do
not reach Ray (``qsweep.orchestrator.trial.worker`` turns them into outcomes).

Intermediate values for the pruner travel through a :class:`PruneBroker` actor: the worker's
``report(step, value)`` waits there until the driver, which owns the Optuna studies, has
decided. Locally ``Cluster.connect`` starts Ray with the declared (or detected) resources;
with ``address`` it joins a running cluster, as under ``ray job submit``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ray

log = logging.getLogger("qsweep")

NAMESPACE = "qsweep"
REPORT_TIMEOUT_S = 600.0
"""How long a worker waits for the pruner's decision before it carries on."""
FORWARDED_PREFIXES = ("QSWEEP_FAULT_", "QSWEEP_METRICS_WAIT_S", "MLFLOW_HTTP_REQUEST_")
"""Driver environment variables that trials receive on any cluster: test-only fault injection,
how long a trial waits for MLflow, and MLflow's client settings of retries and timeouts (never
credentials: Ray may write a task's environment into its logs)."""


class TrialCrashed(Exception):
    """A trial's worker process died more often than Ray retries it."""


@ray.remote(num_cpus=0)
class PruneBroker:
    """Carries intermediate reports from workers to the driver and its decisions back."""

    def __init__(self) -> None:
        self._pending: list[tuple[str, int, float]] = []
        self._events: dict[tuple[str, int], asyncio.Event] = {}
        self._decisions: dict[tuple[str, int], bool] = {}

    async def report(self, key: str, step: int, value: float) -> bool:
        event = self._events.setdefault((key, step), asyncio.Event())
        self._pending.append((key, step, value))
        try:
            await asyncio.wait_for(event.wait(), REPORT_TIMEOUT_S)
        except TimeoutError:
            return False
        finally:
            self._events.pop((key, step), None)
        return self._decisions.pop((key, step), False)

    async def take(self) -> list[tuple[str, int, float]]:
        pending, self._pending = self._pending, []
        return pending

    async def decide(self, key: str, step: int, prune: bool) -> None:
        self._decisions[(key, step)] = prune
        event = self._events.get((key, step))
        if event is not None:
            event.set()


def _run(fn: Callable[..., Any], request: Any, broker: Any) -> Any:
    report = None
    if broker is not None:
        def report(step: int, value: float) -> bool:
            try:
                return bool(ray.get(broker.report.remote(request.key, step, value)))
            except ray.exceptions.RayError:
                return False  # the driver is gone; carry on

    return fn(request, report)


def _run_in_kept_process(fn: Callable[..., Any], request: Any, broker: Any) -> Any:
    return _run(fn, request, broker)


_trial_task = ray.remote(max_calls=1)(_run)
"""A trial on GPUs: a fresh process, which exits after it."""
_cpu_trial_task = ray.remote(max_calls=0)(_run_in_kept_process)
"""A trial without GPUs: in a process kept for the next one (a function of its own name,
since Ray keys a function's ``max_calls`` by its name)."""


@dataclass(frozen=True)
class Capacity:
    """What a cluster holds: its GPUs and CPUs, and CPUs per GPU on its GPU nodes."""

    gpus: float
    cpus: float
    cpus_per_gpu: float = 0.0
    """The fewest CPUs per GPU of any node with GPUs (0: no GPU anywhere)."""


@dataclass(frozen=True)
class TrialResources:
    """What each trial asks of the cluster."""

    gpus: float
    """GPUs each trial asks Ray for (half of one when two trials take turns on each GPU)."""
    cpus: float
    overlap: bool = False
    """Two trials share each GPU and take turns computing on it (``resources.overlap``)."""
    load_ahead: bool = False
    """The one waiting loads its model while the other trains (``resources.load_ahead``)."""

    @property
    def compute_gpus(self) -> float:
        """GPUs a trial has to itself while it trains or evaluates."""
        return self.gpus * 2 if self.overlap else self.gpus


class Cluster:
    """A connection to a Ray cluster that runs trials."""

    def __init__(self, address: str | None = None, num_gpus: int | None = None, num_cpus: int | None = None):
        # Under `ray job submit` the job's driver finds its cluster in RAY_ADDRESS.
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.num_gpus = num_gpus
        self.num_cpus = num_cpus
        self._broker: Any = None
        self._functions: dict[int, Any] = {}

    def connect(self) -> Capacity:
        """Start or join Ray; the cluster's total GPUs and CPUs."""
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"namespace": NAMESPACE, "log_to_driver": False,
                                      "configure_logging": False}
            if self.address:
                kwargs["address"] = self.address
            else:
                # A private local cluster ("local": never one that `ray start` left running on
                # this machine, which Ray would join otherwise); declared GPUs let a CPU machine
                # schedule GPU trials.
                kwargs.update(address="local", num_gpus=self.num_gpus, num_cpus=self.num_cpus,
                              include_dashboard=False)
            ray.init(**kwargs)
        resources = ray.cluster_resources()
        per_gpu = [node["Resources"].get("CPU", 0) / node["Resources"]["GPU"] for node in ray.nodes()
                   if node.get("Alive") and node["Resources"].get("GPU", 0) > 0]
        return Capacity(gpus=float(resources.get("GPU", 0)), cpus=float(resources.get("CPU", 0)),
                        cpus_per_gpu=float(min(per_gpu, default=0.0)))

    def broker(self) -> Any:
        if self._broker is None:
            self._broker = PruneBroker.remote()
        return self._broker

    def submit(self, fn: Callable[..., Any], request: Any, *, gpus: float, cpus: float, retries: int,
               pruning: bool) -> Any:
        """Start ``fn(request, report)`` in a worker process (fresh for a trial on GPUs, kept
        between trials without); a reference to its result."""
        if id(fn) not in self._functions:  # pickled once, not with every trial
            self._functions[id(fn)] = ray.put(fn)
        env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_PREFIXES)}
        options: dict[str, Any] = {"num_gpus": gpus, "num_cpus": cpus, "max_retries": retries,
                                   "retry_exceptions": False}
        if env:
            options["runtime_env"] = {"env_vars": env}
        task = _trial_task if gpus > 0 else _cpu_trial_task
        return task.options(**options).remote(self._functions[id(fn)], request,
                                              self.broker() if pruning else None)

    @staticmethod
    def wait(refs: list[Any], timeout: float) -> list[Any]:
        """The references among ``refs`` whose trials have ended (waits up to ``timeout`` s)."""
        if not refs:
            return []
        first, rest = ray.wait(refs, num_returns=1, timeout=timeout)
        if first and rest:
            more, _ = ray.wait(rest, num_returns=len(rest), timeout=0)
            first += more
        return first

    @staticmethod
    def result(ref: Any) -> Any:
        """The trial's outcome; :class:`TrialCrashed` if its worker died past its retries."""
        try:
            return ray.get(ref)
        except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                ray.exceptions.OutOfMemoryError, ray.exceptions.TaskCancelledError) as err:
            raise TrialCrashed(f"{type(err).__name__}: {str(err).splitlines()[0][:300]}") from None
        except ray.exceptions.RayTaskError as err:
            raise TrialCrashed(f"{type(err.cause).__name__}: {str(err.cause)[:300]}") from None

    def pending_reports(self) -> list[tuple[str, int, float]]:
        return ray.get(self.broker().take.remote()) if self._broker is not None else []

    def decide(self, key: str, step: int, prune: bool) -> None:
        self.broker().decide.remote(key, step, prune)

    @staticmethod
    def cancel(ref: Any) -> None:
        ray.cancel(ref, force=True)

    @staticmethod
    def shutdown() -> None:
        if ray.is_initialized():
            ray.shutdown()
