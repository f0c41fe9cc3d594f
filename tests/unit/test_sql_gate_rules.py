"""Each rule of the SQL gate on its own class of statements.

The gate's rules overlap (most hostile SQL would be refused by more than one), so a corpus
that only asserts "refused with some ``sql_*`` code" stays green when one rule is removed.
Here every class names the rule that must refuse it: the exact code and message. Removing or
weakening any one rule changes the code or message for its class (or lets it through), and
that class fails. The classes are the hostile corpus of test_sql_gate.py, grouped by rule.
"""

from __future__ import annotations

import re

import pytest

from trace_core.errors import SqlRejected
from trace_core.query.gate import MAX_LITERAL_BYTES, validate_sql

ALLOWED = {"blocks", "transactions", "logs", "t"}

# (code, message with '?' standing for a quoted name from the query): statements
RULES: dict[tuple[str, str], list[str]] = {
    # the parser's statement count, then the token scan (a trailing empty statement)
    ("sql_multiple_statements", "exactly one statement is allowed (the parser found 2)"): [
        "SELECT 1; SELECT 2",
        "SELECT 1; /* ok */ SELECT 2",
    ],
    ("sql_multiple_statements", "exactly one statement is allowed"): ["SELECT 1;;"],
    ("sql_not_select", "only a read-only SELECT query is allowed"): [
        "UPDATE t SET x = 1",
        "CREATE TABLE t(x INT)",
        "DELETE FROM t",
        "INSTALL httpfs",
        "LOAD httpfs",
        "ATTACH 'db.duckdb' AS other",
        "ATTACH 'foo.db' AS other",
        "COPY blocks TO 'x.csv'",
        "COPY (SELECT 1) TO 's3://bucket/x.parquet'",
        "EXPORT DATABASE 'x'",
        "IMPORT DATABASE 'x'",
        "PRAGMA enable_profiling",
        "SET threads = 1",
        "RESET threads",
        "SET VARIABLE x = 1",
        "CALL duckdb_settings()",
        "DETACH other",
        "CREATE SECRET s (TYPE s3, KEY_ID 'a', SECRET 'b')",
        "DROP TABLE blocks",
        "ALTER TABLE blocks RENAME TO x",
        "INSERT INTO t VALUES (1)",
        "CREATE MACRO m() AS 1",
        "CREATE VIEW v AS SELECT 1",
        "USE other",
        "CHECKPOINT",
        "VACUUM",
        "EXPLAIN SELECT 1",
        "PIVOT blocks ON a USING sum(b)",
        "SELECT 1; ATTACH 'x' AS y",
        "SELECT 1 --\n; DROP TABLE blocks",
        "/* SELECT */ INSTALL httpfs",
        "-- SELECT\nLOAD httpfs",
    ],
    ("sql_table_function", "table functions are not allowed"): [
        "SELECT * FROM read_csv('data')",
        "SELECT * FROM read_parquet('x')",
        "SELECT * FROM read_parquet('http://example.com/x.parquet')",
        "SELECT * FROM parquet_scan('x')",
        "WITH blocks AS (SELECT * FROM read_parquet('/etc/passwd')) SELECT * FROM blocks",
        "SELECT * FROM read_csv_auto('x')",
        "SELECT * FROM read_json('x')",
        "SELECT * FROM read_json_auto('x')",
        "SELECT * FROM read_ndjson_objects('x')",
        "SELECT * FROM read_text('/etc/passwd')",
        "SELECT * FROM read_blob('/etc/passwd')",
        "SELECT * FROM sqlite_scan('x.db', 't')",
        "SELECT * FROM postgres_scan('dbname=x', 'public', 't')",
        "SELECT * FROM query_table('t')",
        "SELECT * FROM query('SELECT 1')",
        "SELECT * FROM iceberg_scan('s3://b/t')",
        "SELECT * FROM delta_scan('s3://b/t')",
        "SELECT * FROM glob('*')",
        "SELECT * FROM duckdb_secrets()",
        "SELECT * FROM duckdb_settings()",
        "SELECT * FROM duckdb_extensions()",
        "SELECT * FROM duckdb_databases()",
        "SELECT * FROM which_secret('s3://b/k', 's3')",
        "SELECT * FROM range(10)",
        "SELECT * FROM blocks, LATERAL read_parquet('x')",
        "SELECT * FROM blocks b JOIN (SELECT * FROM read_json('x')) j ON true",
        "SELECT * FROM blocks WHERE EXISTS (FROM read_text('/etc/passwd'))",
        "select * from READ_PARQUET('x')",
        "SeLeCt * FrOm Read_Csv('x')",
        "WITH unused AS (SELECT * FROM read_csv('x')) SELECT 1",
    ],
    ("sql_quoted_function", "quoted function names are not allowed"): [
        "SELECT * FROM \"read_parquet\"('x')",
        "SELECT \"lower\"('X')",
        "SELECT \"read_text\"('x')",
        "SELECT * FROM \"glob\"('*')",
        'SELECT "main"."lower"(\'x\')',
    ],
    ("sql_forbidden_function", "function '?' is not allowed"): [
        "SELECT getenv('HOME')",
        "SELECT current_setting('s3_secret_access_key')",
        "SELECT getvariable('x')",
        "SELECT current_query()",
        "SELECT json_serialize_plan('SELECT 1')",
        "SELECT nextval('s')",
        "SELECT sleep_ms(100000)",
        "SELECT write_log('x')",
        "SELECT 1 FROM blocks WHERE a = (SELECT getenv('X'))",
    ],
    ("sql_forbidden_relation", "relation must be a plain identifier"): [
        "SELECT * FROM 'local.csv'",
        "SELECT * FROM t, 'local.csv'",
        "SELECT * FROM t JOIN 'local.csv' ON 1=1",
        "SELECT * FROM (SELECT * FROM 's3://other/x.parquet')",
        "SELECT * FROM blocks WHERE hash IN (SELECT * FROM 'x.parquet')",
        "SELECT (SELECT count(*) FROM 'x.csv')",
        "SELECT * FROM (FROM 'x.csv')",
        "SELECT * FROM blocks POSITIONAL JOIN 'x.csv'",
        "SELECT * FROM blocks UNION ALL SELECT * FROM 'x.parquet'",
        "SELECT * FROM blocks ORDER BY (SELECT count(*) FROM 'x.csv')",
        "SELECT * FROM blocks LIMIT (SELECT count(*) FROM 'x.csv')",
        "SELECT * FROM blocks QUALIFY (SELECT 1 FROM 'x.csv') = 1",
        "SELECT sum(a) FILTER (WHERE a IN (SELECT * FROM 'x.csv')) FROM blocks",
        "SELECT a FROM blocks GROUP BY (SELECT 1 FROM 'x.csv')",
        "SELECT list_transform([1], x -> (SELECT 1 FROM 'x.csv'))",
        "SELECT * FROM 'https://evil.example/x.parquet'",
        'SELECT * FROM "blocks.parquet"',
        "WITH blocks AS (SELECT * FROM 'x.parquet') SELECT * FROM blocks",
        "WITH RECURSIVE r AS (SELECT * FROM 'x.csv' UNION ALL SELECT * FROM r) SELECT * FROM r",
        "SELECT/**/*/**/FROM/**/'x.parquet'",
        "SELECT * FROM /* c */ 'x.parquet'",
        "SELECT * FROM -- c\n 'x.parquet'",
    ],
    ("sql_forbidden_relation", "CTE name must be a plain identifier"): [
        'WITH "x.parquet" AS (SELECT 1) SELECT * FROM "x.parquet"',
        'WITH a AS (SELECT * FROM "x.parquet"), "x.parquet" AS (SELECT 1) SELECT * FROM a',
    ],
    ("sql_forbidden_relation", "unknown relation '?'"): [
        "WITH a AS (SELECT * FROM b), b AS (SELECT 1) SELECT * FROM a",
        "SELECT * FROM (WITH y AS (SELECT 1) SELECT * FROM y) s, y",
        "SELECT * FROM duckdb_settings",
        "SELECT * FROM unknown_relation",
    ],
    ("sql_forbidden_relation", "qualified relation names are not allowed"): [
        "SELECT * FROM information_schema.tables",
        "SELECT * FROM pg_catalog.pg_settings",
        "SELECT * FROM system.main.duckdb_settings",
        "SELECT * FROM main.blocks",
        "SELECT * FROM hot.data.hot_blocks",
    ],
    ("sql_forbidden_function", "schema-qualified functions are not allowed"): [
        "SELECT system.main.lower('x')",
    ],
    ("sql_not_select", "the query must start with SELECT or WITH"): [
        "DESCRIBE blocks",
        "SHOW TABLES",
        "SUMMARIZE blocks",
        "FROM 'x.parquet'",
        "FROM blocks",
        "VALUES (1)",
    ],
    ("sql_unsupported", "unsupported query construct SHOW_REF"): [
        "SELECT * FROM (DESCRIBE blocks)",
        "SELECT * FROM (SHOW TABLES)",
        "SELECT * FROM (SUMMARIZE blocks)",
    ],
    ("sql_parse_error", "SQL could not be parsed"): [
        "SELECT 1 INTO t",
        "SEL/**/ECT 1",
        "SELECT 1 /* unterminated",
        "SELECT 'unterminated",
        'SELECT "unterminated',
    ],
    ("sql_unsupported", "query parameters are not allowed"): [
        "SELECT $1",
        "SELECT ?",
    ],
    ("sql_no_statement", "no SQL statement given"): [
        "",
        "   ",
        "-- only a comment",
        "/* only a comment */",
    ],
    ("sql_invalid_text", "SQL contains a NUL character"): [
        "SELECT 1\x00; ATTACH 'x' AS y",
    ],
    ("sql_literal_too_large", "a literal or identifier is larger than 4096 bytes"): [],
}
RULES[
    ("sql_literal_too_large", f"a literal or identifier is larger than {MAX_LITERAL_BYTES} bytes")
] = [
    "SELECT '" + "a" * (MAX_LITERAL_BYTES + 1) + "'",
    'SELECT 1 AS "' + "a" * (MAX_LITERAL_BYTES + 1) + '"',
    "SELECT * FROM blocks WHERE hash = '" + "é" * (MAX_LITERAL_BYTES // 2 + 1) + "'",
]
RULES[("sql_too_large", "SQL is larger than 64 bytes")] = ["SELECT 1 AS " + "x" * 60]
RULES[("sql_too_deep", "SQL nests deeper than 3 levels")] = ["SELECT ((((1))))"]

LIMITS = {"sql_too_large": {"max_bytes": 64}, "sql_too_deep": {"max_depth": 3}}


def _pattern(message: str) -> str:
    return re.escape(message).replace("'\\?'", "'[^']*'")


CASES = [
    pytest.param(code, message, sql, id=f"{code}:{i}")
    for (code, message), statements in RULES.items()
    for i, sql in enumerate(statements)
]


@pytest.mark.parametrize(("code", "message", "sql"), CASES)
def test_each_rule_refuses_its_class(code: str, message: str, sql: str) -> None:
    with pytest.raises(SqlRejected) as info:
        validate_sql(sql, ALLOWED, **LIMITS.get(code, {}))
    assert info.value.code == code
    if code == "sql_parse_error":
        assert info.value.message.startswith(message)
    else:
        assert re.fullmatch(_pattern(message), info.value.message), info.value.message


def test_every_rule_has_a_class() -> None:
    """Every refusal the gate can make (each raise in gate.py) has a class above."""
    import inspect

    from trace_core.query import gate

    source = inspect.getsource(gate)
    raised = set(re.findall(r'SqlRejected\(\s*"(sql_[a-z_]+)"', source))
    raised |= set(re.findall(r'SqlRejected\(\s*\n\s*"(sql_[a-z_]+)"', source))
    assert raised <= {code for code, _ in RULES} | {"sql_invalid_text"}, raised
