"""The Query Service: sandboxed SQL over committed dataset versions (and hot rows).

``gate`` decides whether SQL may run (pure), ``tokens`` issues and verifies bearer tokens,
``attach`` resolves grants to registered versions and checked file lists, ``engine`` runs the
query in a fresh locked-down DuckDB, ``export`` renders or exports results, ``audit`` records
every query, and ``app`` is the Starlette service (``create_app``, ``serve``) plus its client
(``query_http``, ``local_user_token``); ``client`` picks HTTP or the embedded path
(``choose_route``, ``query_embedded``: the service's pipeline in this process).
"""
