"""Dev-only tools: a local anvil chain (``devchain``), the Monad staking fixture
(``devstaking``) and a loopback JSON-RPC proxy with latency and fault hooks (``rpcproxy``:
``RpcProxy``, and ``FaultProxy`` that the RPC-pool tests drive). trace_core never imports them
(tests/unit/test_import_graph.py); the demo, tests and benchmarks do."""
