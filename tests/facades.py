"""A blocking face over AsyncLimiter, so one behavioural suite runs against both APIs.

Each call is run on an event loop in a background thread (one loop per test), the way a sync
test would call the Limiter. This is test scaffolding only: the library has no sync facade over
its async API.
"""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING, Any, TypeVar

from collet_limiter import Acquired, AsyncLease, AsyncLimiter, QueueWait

if TYPE_CHECKING:
    from collections.abc import Coroutine
    from types import TracebackType

T = TypeVar("T")


class LoopThread:
    """An event loop running in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=120)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class LeaseFacade:
    """An AsyncLease seen through blocking calls."""

    def __init__(self, lease: AsyncLease, loop: LoopThread) -> None:
        self._lease, self._loop = lease, loop

    def __getattr__(self, name: str) -> Any:
        return getattr(self._lease, name)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LeaseFacade) and other._lease is self._lease

    def __hash__(self) -> int:
        return id(self._lease)

    def __repr__(self) -> str:
        return repr(self._lease)

    def release(self) -> None:
        self._loop.run(self._lease.release())

    def report_rate_limited(self, *args: Any, **kwargs: Any) -> Any:
        return self._loop.run(self._lease.report_rate_limited(*args, **kwargs))

    def __enter__(self) -> LeaseFacade:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._loop.run(self._lease.__aexit__(exc_type, exc, tb))


class AsyncFacade:
    """An AsyncLimiter with the Limiter's blocking methods."""

    def __init__(self, limiter: AsyncLimiter, loop: LoopThread) -> None:
        self.limiter, self._loop = limiter, loop
        self._leases: dict[int, LeaseFacade] = {}
        loop.run(limiter.open())

    def _wrap(self, lease: AsyncLease) -> LeaseFacade:
        return self._leases.setdefault(id(lease), LeaseFacade(lease, self._loop))

    def acquire(self, primary: Any, fallback_chain: Any = None, **kwargs: Any) -> LeaseFacade:
        async def acquire() -> AsyncLease:
            return await self.limiter.acquire(primary, fallback_chain, **kwargs)

        return self._wrap(self._loop.run(acquire()))

    def acquire_wait(self, key: Any, timeout: float | None = None, **kwargs: Any) -> LeaseFacade:
        return self._wrap(self._loop.run(self.limiter.acquire_wait(key, timeout, **kwargs)))

    def acquire_with_fallback(self, primary: Any, fallback_chain: Any = None, **kwargs: Any) -> Any:
        result = self._loop.run(
            self.limiter.acquire_with_fallback(primary, fallback_chain, **kwargs)
        )
        return result if isinstance(result, QueueWait) else Acquired(self._wrap(result.lease))

    def call(self, primary: Any, fn: Any, fallback_chain: Any = None, **kwargs: Any) -> Any:
        """``AsyncLimiter.call`` with a blocking ``fn`` (run on the loop, as an async fn's
        body would be)."""

        async def afn(lease: AsyncLease) -> Any:
            return fn(self._wrap(lease))

        return self._loop.run(self.limiter.call(primary, afn, fallback_chain, **kwargs))

    def renew(self) -> list[LeaseFacade]:
        return [self._wrap(lease) for lease in self._loop.run(self.limiter.renew())]

    def close(self) -> None:
        self._loop.run(self.limiter.close())

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.limiter, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._loop.run(attribute(*args, **kwargs))

        return call

    def __repr__(self) -> str:
        return repr(self.limiter)
