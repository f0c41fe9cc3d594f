"""The JSON-RPC adapter: ``client`` (one endpoint, httpx), ``pool`` (endpoints with failover,
rate limits and circuit breakers), ``limits`` (per-pool extraction slots across processes)."""
