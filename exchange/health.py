"""gRPC health that follows the exchange's dependencies.

``HealthMonitor`` asks the store and the bus to answer (``Store.ping``,
``Bus.ping``) every ``interval_s``, each with its own timeout so that a hung
dependency cannot stall the monitor. While either fails, the health status of the
whole server ("") and of every service it names is NOT_SERVING; once both answer
again, SERVING. A change is logged once (saying which dependency failed and why),
not at every check. The last failure is kept for ``/readyz``.

It never fights a graceful shutdown: after ``stop()`` it sets nothing, and the
servicer itself ignores ``set`` after ``enter_graceful_shutdown()``.

Nothing here knows which store or bus it watches (SQLite or PostgreSQL, the local
bus or Kafka): ``ping`` is the whole contract.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

from grpc_health.v1 import health_pb2

from exchange._tasks import cancel_and_wait
from exchange.errors import ExchangeError
from exchange.metrics import Metrics

__all__ = ["HealthMonitor"]

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
_SHUTTING_DOWN = "the server is shutting down"


class Pingable(Protocol):
    async def ping(self) -> None: ...


class HealthServicer(Protocol):
    """What the monitor uses of grpc_health's (asyncio) HealthServicer."""

    async def set(self, service: str, status: Any) -> None: ...

    async def Check(self, request: Any, context: Any) -> Any: ...


class _NoContext:
    """Stands in for a call context when the monitor reads a status itself."""

    async def abort(self, code: Any, details: str = "") -> None:
        raise LookupError(f"no health status: {code}")


class HealthMonitor:
    def __init__(
        self,
        store: Pingable,
        bus: Pingable,
        health: HealthServicer,
        *,
        services: Iterable[str] = ("",),
        interval_s: float = 1.0,
        timeout_s: float = 3.0,
        metrics: Metrics | None = None,
    ) -> None:
        self._checks: tuple[tuple[str, Callable[[], Awaitable[None]]], ...] = (
            ("store", store.ping),
            ("bus", bus.ping),
        )
        self._health = health
        self._services = tuple(dict.fromkeys(("", *services)))
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self._metrics = metrics or Metrics(process=False)
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped = False
        # What is failing now (dependency names), and why; () and "" while healthy.
        # Written on the event loop, read by the HTTP thread: one reference swap.
        self._failing: tuple[str, ...] = ()
        self._reason = ""
        self._lock = threading.Lock()

    @property
    def reason(self) -> str:
        """Why the exchange is NOT_SERVING ("" while both dependencies answer)."""
        with self._lock:
            return self._reason

    @property
    def failing(self) -> tuple[str, ...]:
        """The dependencies that failed the last check ("store", "bus")."""
        return self._failing

    def start(self) -> None:
        if self._task is None and not self._stopped:
            self._loop = asyncio.get_running_loop()
            self._task = asyncio.create_task(self._run(), name="health-monitor")

    async def stop(self) -> None:
        """Stop checking; the statuses stay as they are (graceful shutdown sets them)."""
        self._stopped = True
        with self._lock:
            self._reason = _SHUTTING_DOWN
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def check_once(self) -> str:
        """Ask both dependencies now and apply the outcome; returns the reason ("" if
        both answered)."""
        results = await asyncio.gather(*(self._probe(name, ping) for name, ping in self._checks))
        names = [name for name, _ in self._checks]
        for name, why in zip(names, results, strict=True):
            self._metrics.dependency_up.labels(name).set(0 if why else 1)
        failing = tuple(name for name, why in zip(names, results, strict=True) if why)
        reason = "; ".join(why for why in results if why)
        await self._apply(failing, reason)
        return reason

    async def _run(self) -> None:
        while not self._stopped:
            try:
                await self.check_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug here must not end health checking
                log.exception("health: the check itself failed")
            await asyncio.sleep(self._interval_s)

    async def _probe(self, name: str, ping: Callable[[], Awaitable[None]]) -> str:
        try:
            async with asyncio.timeout(self._timeout_s):
                await ping()
        except TimeoutError:
            return f"{name}: no answer within {self._timeout_s:g} s"
        except ExchangeError as exc:
            return f"{name}: {exc.message}"
        except Exception as exc:  # noqa: BLE001 - any failure is an unhealthy answer, said
            return f"{name}: {type(exc).__name__}: {exc}"
        return ""

    async def _apply(self, failing: tuple[str, ...], reason: str) -> None:
        if self._stopped:
            return
        changed = failing != self._failing
        self._failing = failing
        with self._lock:
            self._reason = reason
        if not changed:
            return
        status = NOT_SERVING if failing else SERVING
        for service in self._services:
            await self._health.set(service, status)
        self._metrics.serving.set(0 if failing else 1)
        if failing:
            log.warning("health: NOT_SERVING: %s", reason)
        else:
            log.info("health: SERVING again: the store and the bus answer")

    # -- for /readyz (called on another thread) -----------------------------------------

    def readiness(self, timeout_s: float = 2.0) -> tuple[bool, str]:
        """(ready, reason): whether the gRPC health status of "" is SERVING, read on
        the event loop. Call it from another thread (the HTTP endpoint's); a loop
        that does not answer within ``timeout_s`` counts as not ready."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return False, "the health monitor is not running"
        future = asyncio.run_coroutine_threadsafe(self._overall(), loop)
        try:
            status = future.result(timeout_s)
        except TimeoutError:
            future.cancel()
            return False, f"the server's event loop did not answer within {timeout_s:g} s"
        except (RuntimeError, LookupError) as exc:
            return False, str(exc)
        if status == SERVING:
            return True, ""
        return False, self.reason or _SHUTTING_DOWN

    async def _overall(self) -> Any:
        response = await self._health.Check(health_pb2.HealthCheckRequest(service=""), _NoContext())
        return response.status
