"""RPC pools: several endpoints behind one pool name, with failover and rate limits.

A pool's endpoints come from the environment only (``TRACE_RPC_POOL_<POOL>_URL`` first, then
the comma-separated ``..._URLS``; ``settings.rpc_pool_urls``), with an optional per-endpoint
rate limit (``TRACE_RPC_POOL_<POOL>_ENDPOINT_RPS`` or ``settings.rpc_endpoint_requests_per_second``).

``RpcPool`` has the typed methods of ``RpcClient``; each call goes to the first endpoint that
is not cooling down and fails over to the next on a transport error, a timeout, an HTTP error
(429 and 503 cool the endpoint for their ``Retry-After``, capped) or a JSON-RPC error, up to
``max_attempts`` attempts. ``check`` probes every endpoint (chain id, head) and returns the pool
narrowed to the endpoints that serve the right chain and, when asked, a given block: a wrong
chain or a stale head is detected there, before any data is read. Endpoints are named
``pool P endpoint N`` in messages and logs; a URL never appears.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

from trace_core.errors import ChainMismatch, ConfigError, CoverageError, RpcError
from trace_core.rpc.client import JsonRpc, RpcClient
from trace_core.settings import Settings, rpc_pool_env_var, rpc_pool_rps, rpc_pool_urls

log = logging.getLogger(__name__)

T = TypeVar("T")
ERROR_COOLDOWN_SECONDS = 1.0
# JSON-RPC error codes providers use for rate limits and oversized requests
LIMIT_CODES = frozenset({-32005, -32029, 429})


class RateLimiter:
    """A token bucket (``rate`` per second, burst of one second's worth, at least one).
    Thread-safe; ``clock`` and ``sleep`` are injectable for tests."""

    def __init__(
        self,
        rate: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate)
        self._tokens = self.capacity
        self._clock = clock
        self._sleep = sleep
        self._last = clock()
        self._lock = threading.Lock()

    def acquire(self) -> float:
        """Take one token, sleeping until one is available; returns the seconds waited."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= 1.0
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            self._sleep(wait)
        return wait


@dataclass
class Endpoint:
    """One URL of a pool. ``url`` is a secret: kept out of repr and messages."""

    label: str
    url: str
    rps: float
    client: RpcClient
    limiter: RateLimiter | None
    cooling_until: float = 0.0

    def __repr__(self) -> str:
        return f"Endpoint({self.label})"


@dataclass(frozen=True)
class EndpointCheck:
    """What ``RpcPool.check`` saw at one endpoint; ``problem`` is None when it is usable."""

    label: str
    chain_id: int | None
    head: int | None
    problem: str | None = None


@dataclass(frozen=True)
class _Probed:
    """A successful ``check``: when, the lowest head among its usable endpoints, the view."""

    at: float
    head: int
    usable: RpcPool


class RpcPool(JsonRpc):
    """Failover JSON-RPC over a pool's endpoints (see the module docstring). Thread-safe."""

    def __init__(
        self,
        pool: str,
        endpoints: Sequence[Endpoint],
        *,
        max_attempts: int = 4,
        max_retry_after: float = 30.0,
        max_head_lag: int = 64,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not endpoints:
            raise ConfigError(
                "the rpc pool has no endpoint URL", field=rpc_pool_env_var(pool)
            )  # pragma: no cover - from_env checks first
        self.pool = pool
        self.label = f"pool {pool}"
        self.endpoints = list(endpoints)
        self.max_attempts = max_attempts
        self.max_retry_after = max_retry_after
        self.max_head_lag = max_head_lag
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._probed: dict[int, _Probed] = {}

    @classmethod
    def from_env(
        cls,
        pool: str,
        settings: Settings,
        environ: Mapping[str, str] | None = None,
        *,
        timeout: float | None = None,
    ) -> RpcPool:
        """The pool named ``pool`` from the environment. Raises ``ConfigError`` naming the
        variable when it has no URL or a bad rate limit."""
        urls = rpc_pool_urls(pool, environ)
        if not urls:
            raise ConfigError("the rpc pool has no endpoint URL", field=rpc_pool_env_var(pool))
        return cls.from_urls(
            pool,
            urls,
            timeout=timeout or settings.rpc_timeout_seconds,
            rates=rpc_pool_rps(pool, environ) or [settings.rpc_endpoint_requests_per_second],
            max_attempts=settings.rpc_max_attempts,
            max_retry_after=settings.rpc_max_retry_after_seconds,
            max_head_lag=settings.rpc_max_head_lag_blocks,
        )

    @classmethod
    def from_urls(
        cls,
        pool: str,
        urls: Sequence[str],
        *,
        timeout: float,
        rates: Sequence[float] = (0.0,),
        **options: Any,
    ) -> RpcPool:
        """A pool over ``urls`` (preference order); ``rates`` per endpoint, the last one
        applying to the rest (0 = no limit). ``options`` as for the constructor."""
        endpoints = []
        for i, url in enumerate(urls):
            rps = rates[min(i, len(rates) - 1)] if rates else 0.0
            label = f"pool {pool} endpoint {i + 1}" if len(urls) > 1 else f"pool {pool}"
            endpoints.append(
                Endpoint(
                    label=label,
                    url=url,
                    rps=rps,
                    client=RpcClient(url, label=label, timeout=timeout),
                    limiter=RateLimiter(rps) if rps > 0 else None,
                )
            )
        return cls(pool, endpoints, **options)

    def __repr__(self) -> str:
        return f"RpcPool({self.pool}, {len(self.endpoints)} endpoints)"

    def close(self) -> None:
        for endpoint in self.endpoints:
            endpoint.client.close()

    def __enter__(self) -> RpcPool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def narrowed(self, endpoints: Sequence[Endpoint]) -> RpcPool:
        """The same pool restricted to ``endpoints`` (shared clients: close the parent)."""
        view = RpcPool(
            self.pool,
            endpoints,
            max_attempts=self.max_attempts,
            max_retry_after=self.max_retry_after,
            max_head_lag=self.max_head_lag,
            clock=self._clock,
            sleep=self._sleep,
        )
        view.close = lambda: None  # type: ignore[method-assign]
        return view

    # --- calls with failover -------------------------------------------------------------

    def call(self, method: str, params: Sequence[Any] = ()) -> Any:
        return self._failover(lambda c: c.call(method, params), method)

    def batch(self, calls: Sequence[tuple[str, Sequence[Any]]]) -> list[Any]:
        if not calls:
            return []
        return self._failover(lambda c: c.batch(calls), f"batch of {len(calls)} {calls[0][0]}")

    def _failover(self, fn: Callable[[RpcClient], T], what: str) -> T:
        tried: set[int] = set()
        last: RpcError | None = None
        for _attempt in range(self.max_attempts):
            index = self._pick(tried, what)
            endpoint = self.endpoints[index]
            tried.add(index)
            if endpoint.limiter is not None:
                endpoint.limiter.acquire()
            try:
                return fn(endpoint.client)
            except RpcError as exc:
                last = exc
                self._cool(endpoint, exc)
                log.info(
                    "rpc endpoint failed; failing over",
                    extra={"endpoint": endpoint.label, "method": what, "error": exc.message},
                )
        assert last is not None
        raise RpcError(
            f"{self.label}: {what} failed after {self.max_attempts} attempts; last: {last.message}",
            method=what,
            status=last.fields.get("status"),
            rpc_code=last.fields.get("rpc_code"),
        ) from last

    def _cool(self, endpoint: Endpoint, exc: RpcError) -> None:
        retry_after = exc.fields.get("retry_after")
        status = exc.fields.get("status")
        code = exc.fields.get("rpc_code")
        if retry_after is not None:
            pause = float(retry_after)
        elif status is not None or code in LIMIT_CODES or code is None:
            pause = ERROR_COOLDOWN_SECONDS  # HTTP error, rate limit, timeout, unreachable
        else:
            return  # the endpoint answered with a JSON-RPC error: it is up
        with self._lock:
            # honoured in full: a wait past max_retry_after fails the call in _pick instead
            endpoint.cooling_until = max(endpoint.cooling_until, self._clock() + pause)

    def _pick(self, tried: set[int], what: str) -> int:
        """The first endpoint not cooling (untried ones first); waits for the earliest to
        cool down if all are, up to ``max_retry_after``."""
        while True:
            now = self._clock()
            with self._lock:
                ready = [i for i, e in enumerate(self.endpoints) if e.cooling_until <= now]
                soonest = min(e.cooling_until for e in self.endpoints)
            fresh = [i for i in ready if i not in tried]
            if fresh or ready:
                return (fresh or ready)[0]
            wait = soonest - now
            if wait > self.max_retry_after:
                raise RpcError(
                    f"{self.label}: {what}: every endpoint is rate-limited for {wait:.1f}s",
                    method=what,
                    retry_after=wait,
                )
            self._sleep(wait)

    # --- health ------------------------------------------------------------------------

    def _probe(self, endpoint: Endpoint, chain_id: int) -> tuple[int, int | None]:
        """``eth_chainId`` (and ``eth_blockNumber`` on the right chain) of one endpoint. A 429 or
        503 with a ``Retry-After`` up to ``max_retry_after`` is waited out and asked again (up to
        ``max_attempts`` tries), as calls are: a rate-limited endpoint is not unreachable."""
        attempt = 1
        while True:
            try:
                if endpoint.limiter is not None:
                    endpoint.limiter.acquire()
                served = endpoint.client.chain_id()
                return served, endpoint.client.block_number() if served == chain_id else None
            except RpcError as exc:
                wait = exc.fields.get("retry_after")
                if wait is None or float(wait) > self.max_retry_after:
                    raise
                if attempt >= self.max_attempts:
                    raise
                log.info(
                    "rpc endpoint rate-limited; waiting its Retry-After",
                    extra={"endpoint": endpoint.label, "retry_after": float(wait)},
                )
                self._sleep(float(wait))
                attempt += 1

    def check_cached(
        self, chain_id: int, *, need_block: int | None = None, max_age: float
    ) -> RpcPool:
        """``check``'s usable pool, probed again only when the last successful check of
        ``chain_id`` is older than ``max_age`` seconds or no usable endpoint's head seen then
        reached ``need_block``. Raises as ``check`` does (failures are never cached).

        What a cached answer can miss, for at most ``max_age``: an endpoint that went stale or
        changed chains (cryo's own failover still catches one that stops answering).
        """
        now = self._clock()
        with self._lock:
            hit = self._probed.get(chain_id)
        if (
            hit is not None
            and now - hit.at <= max_age
            and (need_block is None or need_block <= hit.head)
        ):
            return hit.usable
        usable, checks = self.check(chain_id, need_block=need_block)
        heads = [c.head for c in checks if c.problem is None and c.head is not None]
        if heads:
            with self._lock:
                self._probed[chain_id] = _Probed(now, min(heads), usable)
        return usable

    def check(
        self, chain_id: int, *, need_block: int | None = None
    ) -> tuple[RpcPool, list[EndpointCheck]]:
        """Probe every endpoint (``eth_chainId``, ``eth_blockNumber``) and return the pool
        narrowed to the usable ones, plus what each showed.

        Unusable: unreachable, another chain, a head below ``need_block``, or a head more than
        ``max_head_lag`` behind the best one seen (stale). Raises ``ChainMismatch`` if every
        reachable endpoint serves another chain, ``CoverageError`` if the right chain is
        served but no head reaches ``need_block``, ``RpcError`` if none answered.
        """
        seen: list[EndpointCheck] = []
        for endpoint in self.endpoints:
            try:
                served, head = self._probe(endpoint, chain_id)
            except RpcError as exc:
                seen.append(
                    EndpointCheck(endpoint.label, None, None, f"unreachable: {exc.message}")
                )
                continue
            problem = None if served == chain_id else f"serves chain {served}, not {chain_id}"
            seen.append(EndpointCheck(endpoint.label, served, head, problem))
        best = max((c.head for c in seen if c.head is not None), default=None)
        checked = []
        for c in seen:
            head = c.head
            problem = c.problem
            if problem is None and head is not None:
                if need_block is not None and head < need_block:
                    problem = f"head {head} is below block {need_block} (past the head)"
                elif best is not None and best - head > self.max_head_lag:
                    problem = f"stale head {head}, {best - head} blocks behind"
            checked.append(EndpointCheck(c.label, c.chain_id, head, problem))
        for c in checked:
            if c.problem is not None:
                log.warning("rpc endpoint skipped: %s", c.problem, extra={"endpoint": c.label})
        usable = [e for e, c in zip(self.endpoints, checked, strict=True) if c.problem is None]
        if usable:
            return self.narrowed(usable), checked
        if any(c.chain_id == chain_id for c in checked):
            raise CoverageError(
                f"{self.label}: block {need_block} is past the head of every endpoint: "
                + "; ".join(f"{c.label}: {c.problem}" for c in checked)
            )
        if len(checked) == 1 and checked[0].chain_id is not None:
            raise ChainMismatch(f"{self.label} serves chain {checked[0].chain_id}, not {chain_id}")
        if any(c.chain_id is not None for c in checked):
            raise ChainMismatch(
                f"{self.label} serves the wrong chain: "
                + "; ".join(f"{c.label}: {c.problem}" for c in checked)
            )
        if len(checked) == 1:
            raise RpcError(str(checked[0].problem).removeprefix("unreachable: "))
        raise RpcError(
            f"{self.label}: no endpoint answered: "
            + "; ".join(f"{c.label}: {c.problem}" for c in checked)
        )


_shared: dict[tuple[Any, ...], RpcPool] = {}
_shared_lock = threading.Lock()


def shared_pool(pool: str, settings: Settings, environ: Mapping[str, str] | None = None) -> RpcPool:
    """The process's one ``RpcPool`` for ``pool`` as the environment configures it now (a
    changed URL or option list makes another). Shared by every attempt of the process, so its
    HTTP connections, cool-downs and ``check_cached`` probes carry from one range to the next.
    Callers must not close it. Raises ``ConfigError`` as ``from_env``."""
    urls = rpc_pool_urls(pool, environ)
    if not urls:
        raise ConfigError("the rpc pool has no endpoint URL", field=rpc_pool_env_var(pool))
    key = (
        pool,
        tuple(urls),
        tuple(rpc_pool_rps(pool, environ) or [settings.rpc_endpoint_requests_per_second]),
        settings.rpc_timeout_seconds,
        settings.rpc_max_attempts,
        settings.rpc_max_retry_after_seconds,
        settings.rpc_max_head_lag_blocks,
    )
    with _shared_lock:
        found = _shared.get(key)
        if found is None:
            found = _shared[key] = RpcPool.from_env(pool, settings, environ)
        return found
