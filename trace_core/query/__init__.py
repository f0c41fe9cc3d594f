"""The Query Service: sandboxed SQL over committed dataset versions (and hot rows).

``gate`` decides whether SQL may run (pure), ``tokens`` issues and verifies bearer tokens,
``attach`` resolves grants to registered versions and checked file lists, ``engine`` runs the
query in a fresh locked-down DuckDB, ``export`` renders or exports results, ``audit`` records
every query. ``service`` is the pipeline (``QueryService``), ``app`` its HTTP face (Starlette:
``create_app``, ``serve``), ``client`` how callers reach it: over HTTP (``query_http``,
``local_user_token``) or embedded (``choose_route``, ``query_embedded``: the same pipeline in
this process). The client never imports the server app.
"""
