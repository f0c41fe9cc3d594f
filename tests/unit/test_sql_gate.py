"""The SQL gate against a hostile corpus (digest 8.4 examples, its known gaps, and more)."""

from __future__ import annotations

import duckdb
import pytest

from trace_core.errors import SqlRejected
from trace_core.query.gate import (
    ALLOWED_FUNCTIONS,
    MAX_LITERAL_BYTES,
    MAX_SQL_BYTES,
    check_limits,
    nesting_depth,
    sql_fingerprint,
    validate_sql,
    validate_sql_cached,
)

ALLOWED = {"blocks", "transactions", "logs", "t"}

HOSTILE = [
    # digest 8.4 rejected examples
    "SELECT 1; SELECT 2",
    "SELECT 1; /* ok */ SELECT 2",
    "SELECT 1;;",
    "UPDATE t SET x = 1",
    "CREATE TABLE t(x INT)",
    "DELETE FROM t",
    "INSTALL httpfs",
    "LOAD httpfs",
    "ATTACH 'db.duckdb' AS other",
    "ATTACH 'foo.db' AS other",
    "SELECT * FROM read_csv('data')",
    "SELECT * FROM read_parquet('x')",
    "SELECT * FROM read_parquet('http://example.com/x.parquet')",
    "SELECT * FROM parquet_scan('x')",
    "SELECT * FROM \"read_parquet\"('x')",
    "SELECT getenv('HOME')",
    "SELECT * FROM 'local.csv'",
    "SELECT * FROM t, 'local.csv'",
    "SELECT * FROM t JOIN 'local.csv' ON 1=1",
    # the digest's known gap: string-literal relations below depth 0
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
    # CTEs cannot smuggle file reads, whatever their names
    "WITH blocks AS (SELECT * FROM read_parquet('/etc/passwd')) SELECT * FROM blocks",
    "WITH blocks AS (SELECT * FROM 'x.parquet') SELECT * FROM blocks",
    'WITH "x.parquet" AS (SELECT 1) SELECT * FROM "x.parquet"',
    'WITH a AS (SELECT * FROM "x.parquet"), "x.parquet" AS (SELECT 1) SELECT * FROM a',
    "WITH a AS (SELECT * FROM b), b AS (SELECT 1) SELECT * FROM a",
    "SELECT * FROM (WITH y AS (SELECT 1) SELECT * FROM y) s, y",
    "WITH RECURSIVE r AS (SELECT * FROM 'x.csv' UNION ALL SELECT * FROM r) SELECT * FROM r",
    # every table function, file reader or not
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
    # settings, secrets, environment and catalog introspection
    "SELECT current_setting('s3_secret_access_key')",
    "SELECT getvariable('x')",
    "SELECT current_query()",
    "SELECT json_serialize_plan('SELECT 1')",
    "SELECT nextval('s')",
    "SELECT sleep_ms(100000)",
    "SELECT write_log('x')",
    "SELECT 1 FROM blocks WHERE a = (SELECT getenv('X'))",
    "SELECT * FROM duckdb_settings",
    "SELECT * FROM information_schema.tables",
    "SELECT * FROM pg_catalog.pg_settings",
    "SELECT * FROM system.main.duckdb_settings",
    "SELECT * FROM main.blocks",
    "SELECT * FROM hot.data.hot_blocks",
    "SELECT * FROM unknown_relation",
    "SELECT system.main.lower('x')",
    # statements that are not a read-only query
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
    "DESCRIBE blocks",
    "SHOW TABLES",
    "SUMMARIZE blocks",
    "SELECT * FROM (DESCRIBE blocks)",
    "SELECT * FROM (SHOW TABLES)",
    "SELECT * FROM (SUMMARIZE blocks)",
    "WITH unused AS (SELECT * FROM read_csv('x')) SELECT 1",
    "PIVOT blocks ON a USING sum(b)",
    "FROM 'x.parquet'",
    "FROM blocks",
    "VALUES (1)",
    "SELECT 1 INTO t",
    "SELECT 1; ATTACH 'x' AS y",
    # comment tricks
    "SELECT 1 --\n; DROP TABLE blocks",
    "SEL/**/ECT 1",
    "SELECT/**/*/**/FROM/**/'x.parquet'",
    "SELECT * FROM /* c */ 'x.parquet'",
    "SELECT * FROM -- c\n 'x.parquet'",
    "/* SELECT */ INSTALL httpfs",
    "-- SELECT\nLOAD httpfs",
    "SELECT 1 /* unterminated",
    # quoted function names
    "SELECT \"lower\"('X')",
    "SELECT \"read_text\"('x')",
    "SELECT * FROM \"glob\"('*')",
    'SELECT "main"."lower"(\'x\')',
    # parameters, empty, malformed, NUL
    "SELECT $1",
    "SELECT ?",
    "",
    "   ",
    "-- only a comment",
    "/* only a comment */",
    "SELECT 'unterminated",
    'SELECT "unterminated',
    "SELECT 1\x00; ATTACH 'x' AS y",
    # oversized literals and identifiers
    "SELECT '" + "a" * (MAX_LITERAL_BYTES + 1) + "'",
    'SELECT 1 AS "' + "a" * (MAX_LITERAL_BYTES + 1) + '"',
    "SELECT * FROM blocks WHERE hash = '" + "é" * (MAX_LITERAL_BYTES // 2 + 1) + "'",
]

LEGIT = [
    # digest 8.4 allowed examples
    "SELECT 1",
    "SELECT 1;",
    "SELECT ';'",
    "SELECT 'https://example.com/x.parquet'",
    "SELECT 1; -- trailing comment",
    "/* leading */ SELECT 1",
    "WITH t AS (SELECT 1) SELECT * FROM t",
    # URL and file-looking text as data is fine
    "SELECT 'https://example.com' AS url, 's3://bucket/key.parquet' AS key",
    "SELECT * FROM blocks WHERE extra = 'read_parquet(''x.parquet'')'",
    "SELECT count(*) FROM logs WHERE topic0 = 'FROM ''x.csv'''",
    # ordinary analytics
    "SELECT block_number, count(*) AS n FROM transactions GROUP BY ALL ORDER BY n DESC LIMIT 10",
    "SELECT b.block_number, t.transaction_hash FROM blocks b JOIN transactions t USING (block_number)",
    "WITH blocks AS (SELECT * FROM blocks WHERE block_number > 5) SELECT count(*) FROM blocks",
    "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3) SELECT * FROM r",
    "WITH a AS (SELECT 1 AS x), b AS (SELECT x FROM a) SELECT * FROM b",
    "SELECT * FROM (WITH y AS (SELECT 1) SELECT * FROM y) s",
    "(SELECT 1) UNION (SELECT 2)",
    "SELECT 1 UNION ALL BY NAME SELECT 2 EXCEPT SELECT 3",
    "SELECT * FROM (VALUES (1), (2)) v(a)",
    'SELECT "blocks"."block_number" FROM "blocks"',
    "SELECT * FROM Blocks",
    "SELECT sum(value) OVER w, lag(value) OVER w FROM transactions WINDOW w AS (ORDER BY nonce)",
    "SELECT a FROM t QUALIFY row_number() OVER (PARTITION BY b ORDER BY a) = 1",
    "SELECT count(*) FILTER (a > 1), string_agg(a, ',' ORDER BY a), quantile(a, [0.1, 0.5]) FROM t",
    "SELECT CAST(1 AS DECIMAL(10, 2)), [1, 2][1:2], {'a': 1}.a, a::INT[] FROM t",
    "SELECT to_hex(hash), lower(to_hex(miner)), date_trunc('day', to_timestamp(ts)) FROM blocks",
    "SELECT iif(a, 1, 2), unnest([1]), list_transform([1], x -> x + 1), a IS TRUE FROM t",
    "SELECT * FROM t USING SAMPLE 10%",
    "SELECT * FROM blocks ASOF JOIN transactions t ON blocks.block_number >= t.block_number",
    "SELECT * FROM (UNPIVOT t ON a INTO NAME k VALUE v)",
    "SELECT x, count(*) FROM t GROUP BY GROUPING SETS ((x), ())",
    "SELECT COLUMNS(c -> c LIKE 'a%') FROM t",
    "SELECT * EXCLUDE (a) FROM t WHERE a IN (SELECT a FROM t WHERE a > 1)",
    "SELECT CURRENT_DATE, now(), main.lower('X')",
    'SELECT "set", "load" FROM t',
    "SELECT 'x' AS \"read_parquet\"",
    # DuckDB nests block comments: all of this after SELECT 1 is one comment
    "SELECT 1 /* nested /* */ ; ATTACH 'x' */",
]


@pytest.mark.parametrize("sql", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_sql_is_rejected(sql: str) -> None:
    with pytest.raises(SqlRejected) as info:
        validate_sql(sql, ALLOWED)
    assert info.value.code.startswith("sql_")
    assert sql.strip() == "" or sql not in info.value.message


def test_cached_gate_decides_as_the_gate() -> None:
    """The service's remembered decisions: the same acceptances, keyed by the allowed set too,
    and a refusal raises again on every call (hostile SQL twice in a row, each time)."""
    for sql in LEGIT:
        assert validate_sql_cached(sql, ALLOWED) == validate_sql(sql, ALLOWED)
        assert validate_sql_cached(sql, ALLOWED) == validate_sql(sql, ALLOWED)
    for sql in HOSTILE:
        for _ in range(2):
            with pytest.raises(SqlRejected):
                validate_sql_cached(sql, ALLOWED)
    sql = "SELECT count(*) FROM logs"
    assert validate_sql_cached(sql, {"logs"}).relations == {"logs"}
    with pytest.raises(SqlRejected):
        validate_sql_cached(sql, {"blocks"})
    with pytest.raises(SqlRejected):
        validate_sql_cached(sql, {"logs"}, max_bytes=10)


def test_corpus_is_large() -> None:
    assert len(HOSTILE) >= 60
    assert len(set(HOSTILE)) == len(HOSTILE)


@pytest.mark.parametrize("sql", LEGIT, ids=range(len(LEGIT)))
def test_legit_sql_is_accepted(sql: str) -> None:
    decision = validate_sql(sql, ALLOWED)
    assert decision.sql_sha256 == sql_fingerprint(sql)
    assert decision.relations <= ALLOWED


def test_relations_are_the_allowed_ones_actually_read() -> None:
    sql = "WITH blocks AS (SELECT * FROM blocks) SELECT * FROM blocks JOIN logs USING (x)"
    assert validate_sql(sql, ALLOWED).relations == {"blocks", "logs"}
    assert validate_sql("WITH t AS (SELECT 1) SELECT * FROM t", ALLOWED).relations == set()


def test_codes_name_the_rule() -> None:
    cases = {
        "SELECT * FROM read_parquet('x')": "sql_table_function",
        "SELECT * FROM 'x.parquet'": "sql_forbidden_relation",
        "SELECT current_setting('threads')": "sql_forbidden_function",
        "SELECT 1; SELECT 2": "sql_multiple_statements",
        "INSTALL httpfs": "sql_not_select",
        "SELEC 1": "sql_parse_error",
        "SELECT \"lower\"('x')": "sql_quoted_function",
        "SELECT $1": "sql_unsupported",
        "": "sql_no_statement",
    }
    for sql, code in cases.items():
        with pytest.raises(SqlRejected) as info:
            validate_sql(sql, ALLOWED)
        assert info.value.code == code, sql


def test_oversized_sql_is_too_large() -> None:
    sql = "SELECT " + "1 + " * (MAX_SQL_BYTES // 4) + "1"
    with pytest.raises(SqlRejected) as info:
        validate_sql(sql, ALLOWED)
    assert info.value.code == "sql_too_large"


def test_literal_at_the_cap_is_fine() -> None:
    validate_sql("SELECT '" + "a" * MAX_LITERAL_BYTES + "'", ALLOWED)


def test_deeply_nested_sql_fails_closed() -> None:
    with pytest.raises(SqlRejected):
        validate_sql("SELECT " + "1 + " * 20000 + "1", ALLOWED)
    nested = "SELECT * FROM (" * 300 + "SELECT * FROM 'x.csv'" + ")" * 300
    with pytest.raises(SqlRejected):
        validate_sql(nested, ALLOWED)


def test_allowlisted_functions_exist_and_exclude_introspection() -> None:
    con = duckdb.connect()
    known = {
        row[0].lower()
        for row in con.execute("SELECT function_name FROM duckdb_functions()").fetchall()
    }
    # iif and unnest are resolved by the parser/binder rather than listed
    assert ALLOWED_FUNCTIONS - known <= {"iif", "unnest"}
    table_functions = {
        row[0]
        for row in con.execute(
            "SELECT function_name FROM duckdb_functions() WHERE function_type = 'table'"
        ).fetchall()
    }
    # names shared by a scalar and a table function; table functions are refused by kind
    assert ALLOWED_FUNCTIONS & table_functions <= {"range", "generate_series", "unnest", "repeat"}
    for name in ("current_setting", "getvariable", "getenv", "json_serialize_plan", "nextval"):
        assert name not in ALLOWED_FUNCTIONS


def test_nesting_depth_counts_brackets_and_case_outside_literals_and_comments() -> None:
    assert nesting_depth("SELECT 1") == 0
    assert nesting_depth("SELECT ((1)), [[[1]]], {'a': (1)}") == 3
    assert nesting_depth("SELECT CASE WHEN a THEN (CASE WHEN b THEN 1 END) END FROM t") == 3
    assert nesting_depth("SELECT '((((', \"x((((\", $$((($$ -- ((((\n /* (( /* (( */ */") == 0
    assert nesting_depth("SELECT casey, endx FROM t") == 0
    assert nesting_depth("SELECT ))) (1)") == 1  # stray closers never go negative


def test_nesting_and_size_caps_run_before_parsing() -> None:
    deep = "SELECT " + "(" * 11 + "1" + ")" * 11
    with pytest.raises(SqlRejected) as info:
        validate_sql(deep, ALLOWED, max_depth=10)
    assert (info.value.code, info.value.message) == (
        "sql_too_deep",
        "SQL nests deeper than 10 levels",
    )
    validate_sql(deep, ALLOWED, max_depth=11)
    with pytest.raises(SqlRejected) as info:
        check_limits("SELECT 1" + " " * 100, max_bytes=100)
    assert info.value.code == "sql_too_large"


def test_a_parse_tree_too_deep_to_walk_is_refused_not_crashed() -> None:
    """Past the nesting cap, a tree deeper than Python's JSON decoder recurses is refused."""
    nested = "SELECT " + "(SELECT " * 300 + "1" + ")" * 300
    with pytest.raises(SqlRejected) as info:
        validate_sql(nested, ALLOWED, max_depth=10_000)
    assert info.value.code == "sql_too_deep"
    with pytest.raises(SqlRejected) as info:
        validate_sql(nested, ALLOWED)
    assert info.value.code == "sql_too_deep"
