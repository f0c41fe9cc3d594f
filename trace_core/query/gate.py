"""The SQL gate: decide whether untrusted SQL may run, before anything touches storage.

``validate_sql`` parses with DuckDB's own parser (``json_serialize_sql`` on a throwaway
in-memory connection, so there is no parser differential with the engine that will run the
query) and walks the syntax tree with allowlists:

- exactly one statement, which must be a read-only query starting with SELECT, WITH or ``(``;
- every table reference is an allowed relation or a CTE visible at that point (scoped
  exactly as DuckDB scopes them: earlier CTEs of the same WITH, a recursive CTE inside its own
  body, CTEs of enclosing queries); names must be plain identifiers, never schema-qualified,
  so a string-literal relation (``FROM 'x.parquet'``) or a CTE named like a file cannot
  smuggle a file read;
- no table functions at all (file and URL readers, catalog and secret introspection, ...);
- every scalar, aggregate and window function is on ``ALLOWED_FUNCTIONS``, unqualified and
  unquoted; every syntax node is of a known kind, prepared-statement parameters are refused;
- the SQL is at most ``MAX_SQL_BYTES`` and its brackets and CASE expressions nest at most
  ``MAX_NESTING_DEPTH`` deep, both checked before parsing (``check_limits``; the service passes
  its settings), and no literal or identifier exceeds ``MAX_LITERAL_BYTES``; a parse tree too
  deep to walk is refused (``sql_too_deep``) rather than failing the service.

Anything the parser cannot handle, or any node the walker does not know, is refused: the gate
fails closed. It is pure (no I/O besides the private in-memory DuckDB) and never logs SQL.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import duckdb

from trace_core.errors import SqlRejected

MAX_SQL_BYTES = 100 * 1024
MAX_NESTING_DEPTH = 100
MAX_LITERAL_BYTES = 4096

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_WORD = re.compile(rb"[A-Za-z_]+")
_NO_LOCATION = 2**64 - 1

_QUERY_NODES = frozenset({"SELECT_NODE", "SET_OPERATION_NODE", "RECURSIVE_CTE_NODE"})
_TABLE_REFS = frozenset({"BASE_TABLE", "JOIN", "SUBQUERY", "EXPRESSION_LIST", "EMPTY", "PIVOT"})
_OTHER_NODES = frozenset(
    {
        "ORDER_MODIFIER",
        "LIMIT_MODIFIER",
        "LIMIT_PERCENT_MODIFIER",
        "DISTINCT_MODIFIER",
        "ORDER_DEFAULT",
        "ASCENDING",
        "DESCENDING",
    }
)
_KNOWN_TYPES = _QUERY_NODES | _TABLE_REFS | _OTHER_NODES
_EXPRESSION_CLASSES = frozenset(
    {
        "BETWEEN",
        "CASE",
        "CAST",
        "COLLATE",
        "COLUMN_REF",
        "COMPARISON",
        "CONJUNCTION",
        "CONSTANT",
        "FUNCTION",
        "LAMBDA",
        "LAMBDA_REF",
        "OPERATOR",
        "POSITIONAL_REFERENCE",
        "STAR",
        "SUBQUERY",
        "WINDOW",
    }
)

# Pure functions of their arguments. Deliberately absent: anything reading settings, variables,
# the environment, the catalog or the session (current_setting, getvariable, current_query,
# pg_*/has_*_privilege, *_description, in_search_path, inet_*), sequences (nextval), sleeps,
# logging, and json_serialize_plan/json_serialize_sql (they plan or parse a query in a string).
_ALLOWED_FUNCTION_NAMES = """
    !__postfix !~~ !~~* % & && * ** + - ->> / // <-> << <=> <@ >> @ @> ^ ^@ | || ~ ~~ ~~* ~~~
    abs acos acosh add age ago any_value approx_count_distinct approx_quantile approx_top_k
    arbitrary arg_max arg_max_null arg_max_nulls_last arg_min arg_min_null arg_min_nulls_last
    argmax argmin array_agg array_aggr array_aggregate array_append array_apply array_cat
    array_concat array_contains array_cosine_distance array_cosine_similarity
    array_cross_product array_distance array_distinct array_dot_product array_extract
    array_filter array_grade_up array_has array_has_all array_has_any array_indexof
    array_inner_product array_intersect array_length array_negative_dot_product
    array_negative_inner_product array_pop_back array_pop_front array_position array_prepend
    array_push_back array_push_front array_reduce array_resize array_reverse
    array_reverse_sort array_select array_slice array_sort array_to_json array_to_string
    array_transform array_unique array_value array_where array_zip ascii asin asinh atan atan2
    atanh avg bar base64 bin bit_and bit_count bit_length bit_or bit_position bit_xor
    bitstring bitstring_agg bool_and bool_or cardinality cbrt ceil ceiling century char_length
    character_length chr concat concat_ws contains corr cos cosh cot count count_if count_star
    countif covar_pop covar_samp cume_dist current_date current_localtime
    current_localtimestamp damerau_levenshtein date_add date_diff date_part date_sub
    date_trunc datediff datepart datesub datetrunc day dayname dayofmonth dayofweek dayofyear
    days_in_month decade decode degrees dense_rank divide editdist3 element_at encode ends_with
    entropy enum_code enum_first enum_last enum_range enum_range_boundary epoch epoch_ms
    epoch_ns epoch_us equi_width_bins era even exp factorial favg fdiv filter first
    first_value flatten floor fmod format format_bytes formatreadabledecimalsize
    formatreadablesize from_base64 from_binary from_hex from_json from_json_strict fsum gamma
    gcd gen_random_uuid generate_series generate_subscripts geomean geometric_mean get_bit
    get_current_time get_current_timestamp grade_up greatest greatest_common_divisor
    group_concat hamming hash hex histogram histogram_exact hour iif ilike_escape instr
    is_histogram_other_bin isfinite isinf isnan isodow isoyear jaccard jaro_similarity
    jaro_winkler_similarity json json_array json_array_length json_contains json_exists
    json_extract json_extract_path json_extract_path_text json_extract_string
    json_group_array json_group_object json_group_structure json_keys json_merge_patch
    json_object json_pretty json_quote json_structure json_transform json_transform_strict
    json_type json_valid json_value julian kahan_sum kurtosis kurtosis_pop lag last last_day
    last_value lcase lcm lead least least_common_multiple left left_grapheme len length
    length_grapheme levenshtein lgamma like_escape list list_aggr list_aggregate
    list_any_value list_append list_apply list_approx_count_distinct list_avg list_bit_and
    list_bit_or list_bit_xor list_bool_and list_bool_or list_cat list_concat list_contains
    list_cosine_distance list_cosine_similarity list_count list_distance list_distinct
    list_dot_product list_element list_entropy list_extract list_filter list_first
    list_grade_up list_has list_has_all list_has_any list_histogram list_indexof
    list_inner_product list_intersect list_kurtosis list_kurtosis_pop list_last list_mad
    list_max list_median list_min list_mode list_negative_dot_product
    list_negative_inner_product list_pack list_position list_prepend list_product list_reduce
    list_resize list_reverse list_reverse_sort list_select list_sem list_skewness list_slice
    list_sort list_stddev_pop list_stddev_samp list_string_agg list_sum list_transform
    list_unique list_value list_var_pop list_var_samp list_where list_zip listagg ln log log10
    log2 lower lpad ltrim mad make_date make_time make_timestamp make_timestamp_ms
    make_timestamp_ns make_timestamptz map map_concat map_contains map_contains_entry
    map_contains_value map_entries map_extract map_extract_value map_from_entries map_keys
    map_values max max_by md5 md5_number md5_number_lower md5_number_upper mean median
    microsecond millennium millisecond min min_by minute mismatches mod mode month monthname
    multiply nanosecond nextafter nfc_normalize normalized_interval not_ilike_escape
    not_like_escape now nth_value ntile nullif octet_length ord parse_dirname parse_dirpath
    parse_filename parse_formatted_bytes parse_path percent_rank pi position pow power prefix
    printf product quantile quantile_cont quantile_disc quarter radians random range rank
    rank_dense reduce regexp_escape regexp_extract regexp_extract_all regexp_full_match
    regexp_matches regexp_replace regexp_split_to_array repeat replace reservoir_quantile
    reverse right right_grapheme round round_even roundbankers row row_number row_to_json rpad
    rtrim second sem set_bit sha1 sha256 sign signbit sin sinh skewness split split_part sqrt
    starts_with stddev stddev_pop stddev_samp str_split str_split_regex strftime string_agg
    string_split string_split_regex string_to_array strip_accents strlen strpos strptime
    struct_concat struct_contains struct_extract struct_extract_at struct_has struct_indexof
    struct_insert struct_keys struct_pack struct_position struct_update struct_values substr
    substring substring_grapheme subtract suffix sum sum_no_overflow sumkahan tan tanh
    time_bucket timezone timezone_hour timezone_minute to_base to_base64 to_binary
    to_centuries to_days to_decades to_hex to_hours to_json to_microseconds to_millennia
    to_milliseconds to_minutes to_months to_quarters to_seconds to_timestamp to_weeks
    to_years today transaction_timestamp translate trim trunc try_strptime typeof ucase unbin
    unhex unicode union_extract union_tag union_value unnest upper url_decode url_encode uuid
    uuid_extract_timestamp uuid_extract_version uuidv4 uuidv7 var_pop var_samp variance wavg
    week weekday weekofyear weighted_avg xor year yearweek
"""
ALLOWED_FUNCTIONS = frozenset(_ALLOWED_FUNCTION_NAMES.split())


@dataclass(frozen=True)
class GateDecision:
    """An accepted query: its fingerprint and the allowed relations it reads."""

    sql_sha256: str
    relations: frozenset[str]


def sql_fingerprint(sql: str) -> str:
    """sha256 of the SQL text: what logs and the audit carry instead of the SQL."""
    return hashlib.sha256(sql.encode("utf-8", "surrogatepass")).hexdigest()


def validate_sql(
    sql: str,
    allowed_relations: Iterable[str],
    *,
    max_bytes: int = MAX_SQL_BYTES,
    max_depth: int = MAX_NESTING_DEPTH,
) -> GateDecision:
    """Accept one read-only query over ``allowed_relations`` (case-insensitive names).

    Raises ``SqlRejected`` (``code`` names the rule; ``sql_too_large`` for oversized SQL,
    ``sql_too_deep`` for nesting past ``max_depth``). The message may quote an identifier from
    the query; it never contains the whole SQL.
    """
    allowed = frozenset(name.lower() for name in allowed_relations)
    raw = check_limits(sql, max_bytes=max_bytes, max_depth=max_depth)
    tree = _parse(sql)
    statements = tree.get("statements")
    if not isinstance(statements, list) or not statements:
        raise SqlRejected("sql_no_statement", "no SQL statement given")
    if len(statements) != 1:
        raise SqlRejected(
            "sql_multiple_statements",
            f"exactly one statement is allowed (the parser found {len(statements)})",
        )
    tokens = _tokens(sql)
    _check_statement_shape(raw, tokens)
    _check_quoted_function_names(raw, tokens)
    _check_sizes(statements[0])
    relations: set[str] = set()
    _Walker(allowed, relations).walk(statements[0].get("node"), frozenset())
    return GateDecision(sql_fingerprint(sql), frozenset(relations))


_CACHED_SQL_CHARS = 16 * 1024


def validate_sql_cached(
    sql: str,
    allowed_relations: Iterable[str],
    *,
    max_bytes: int = MAX_SQL_BYTES,
    max_depth: int = MAX_NESTING_DEPTH,
) -> GateDecision:
    """``validate_sql`` remembering its last 256 acceptances of SQL up to 16k characters: the
    decision is a pure function of its arguments, and a service sees the same text again and
    again (dashboards, alerts, retries). Refusals are never remembered: each one re-runs every
    check and raises. Raises as ``validate_sql``."""
    allowed = frozenset(name.lower() for name in allowed_relations)
    if len(sql) > _CACHED_SQL_CHARS:
        return validate_sql(sql, allowed, max_bytes=max_bytes, max_depth=max_depth)
    return _remembered(sql, allowed, max_bytes, max_depth)


@functools.lru_cache(maxsize=256)
def _remembered(sql: str, allowed: frozenset[str], max_bytes: int, max_depth: int) -> GateDecision:
    return validate_sql(sql, allowed, max_bytes=max_bytes, max_depth=max_depth)


def check_limits(
    sql: str, *, max_bytes: int = MAX_SQL_BYTES, max_depth: int = MAX_NESTING_DEPTH
) -> bytes:
    """The checks that run before any parser sees ``sql``: valid UTF-8 without NUL, at most
    ``max_bytes``, brackets and CASE nested at most ``max_depth``. Returns the UTF-8 bytes.

    Raises ``SqlRejected`` (``sql_invalid_text``, ``sql_too_large``, ``sql_too_deep``).
    """
    try:
        raw = sql.encode("utf-8")
    except UnicodeEncodeError:
        raise SqlRejected("sql_invalid_text", "SQL is not valid UTF-8 text") from None
    if len(raw) > max_bytes:
        raise SqlRejected("sql_too_large", f"SQL is larger than {max_bytes} bytes")
    if "\x00" in sql:
        raise SqlRejected("sql_invalid_text", "SQL contains a NUL character")
    if nesting_depth(sql) > max_depth:
        raise SqlRejected("sql_too_deep", f"SQL nests deeper than {max_depth} levels")
    return raw


_OPENERS = frozenset(b"([{")
_CLOSERS = frozenset(b")]}")


def nesting_depth(sql: str) -> int:
    """Deepest nesting of ``( [ {`` and ``CASE ... END``, from DuckDB's tokenizer (a linear
    scan that skips literals and comments; unlike the parser it does not recurse).

    Raises ``SqlRejected`` (``sql_parse_error``) if the SQL cannot be tokenized.
    """
    raw = sql.encode("utf-8", "surrogatepass")
    depth = deepest = 0
    for pos, kind in _tokens(sql):
        if kind == duckdb.token_type.operator:
            char = raw[pos]
            if char in _OPENERS:
                depth += 1
                deepest = max(deepest, depth)
            elif char in _CLOSERS:
                depth = max(0, depth - 1)
        elif kind == duckdb.token_type.keyword:
            word = raw[pos : pos + 4].upper()
            if word == b"CASE" and not raw[pos + 4 : pos + 5].isalnum():
                depth += 1
                deepest = max(deepest, depth)
            elif word[:3] == b"END" and not raw[pos + 3 : pos + 4].isalnum():
                depth = max(0, depth - 1)
    return deepest


# --- parsing -----------------------------------------------------------------------------

_local = threading.local()


def _parser() -> duckdb.DuckDBPyConnection:
    con = getattr(_local, "con", None)
    if con is None:
        con = duckdb.connect(
            ":memory:",
            config={
                "enable_external_access": False,
                "autoinstall_known_extensions": False,
                "autoload_known_extensions": False,
                "threads": 1,
            },
        )
        _local.con = con
    return con


def _parse(sql: str) -> dict[str, Any]:
    try:
        row = _parser().execute("SELECT json_serialize_sql(?)", [sql]).fetchone()
    except duckdb.Error as exc:
        raise SqlRejected("sql_parse_error", "SQL could not be parsed") from exc
    try:
        tree = json.loads(row[0]) if row else None
    except RecursionError as exc:
        raise SqlRejected("sql_too_deep", "SQL nests too deeply to check") from exc
    except (TypeError, ValueError) as exc:
        raise SqlRejected("sql_parse_error", "SQL could not be parsed") from exc
    if not isinstance(tree, dict):
        raise SqlRejected("sql_parse_error", "SQL could not be parsed")
    if tree.get("error"):
        detail = str(tree.get("error_message", "")).strip()
        if "Only SELECT statements" in detail:
            raise SqlRejected("sql_not_select", "only a read-only SELECT query is allowed")
        first = detail.splitlines()[0][:200] if detail else ""
        raise SqlRejected("sql_parse_error", f"SQL could not be parsed: {first}".rstrip(": "))
    return tree


def _tokens(sql: str) -> list[tuple[int, Any]]:
    try:
        return list(duckdb.tokenize(sql))
    except duckdb.Error as exc:
        raise SqlRejected("sql_parse_error", "SQL could not be tokenized") from exc


def _check_statement_shape(raw: bytes, tokens: list[tuple[int, Any]]) -> None:
    """Leading keyword, and at most one ``;`` which ends the text (comments aside)."""
    if not tokens:
        raise SqlRejected("sql_no_statement", "no SQL statement given")
    pos = tokens[0][0]
    word = _WORD.match(raw, pos)
    first = word.group(0).upper() if word else raw[pos : pos + 1]
    if first not in (b"SELECT", b"WITH", b"("):
        raise SqlRejected("sql_not_select", "the query must start with SELECT or WITH")
    semicolons = [i for i, (p, kind) in enumerate(tokens) if raw[p : p + 1] == b";"]
    if semicolons and (len(semicolons) > 1 or semicolons[0] != len(tokens) - 1):
        raise SqlRejected("sql_multiple_statements", "exactly one statement is allowed")


def _check_quoted_function_names(raw: bytes, tokens: list[tuple[int, Any]]) -> None:
    """Refuse ``"name"(...)``: a quoted identifier directly followed by an opening paren."""
    for (pos, kind), (next_pos, _) in zip(tokens, tokens[1:], strict=False):
        if (
            kind == duckdb.token_type.identifier
            and raw[pos : pos + 1] == b'"'
            and raw[next_pos : next_pos + 1] == b"("
        ):
            raise SqlRejected("sql_quoted_function", "quoted function names are not allowed")


def _check_sizes(statement: Any) -> None:
    for text in _strings(statement):
        if len(text.encode("utf-8", "surrogatepass")) > MAX_LITERAL_BYTES:
            raise SqlRejected(
                "sql_literal_too_large",
                f"a literal or identifier is larger than {MAX_LITERAL_BYTES} bytes",
            )


def _strings(node: Any) -> Iterator[str]:
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


# --- the tree walk ---------------------------------------------------------------------


class _Walker:
    """Allowlist walk of DuckDB's serialized parse tree with exact CTE scoping."""

    def __init__(self, allowed: frozenset[str], used: set[str]) -> None:
        self.allowed = allowed
        self.used = used

    def walk(self, root: Any, scope: frozenset[str]) -> None:
        # Explicit stack: deeply nested SQL must not exhaust Python's recursion limit.
        stack: list[tuple[Any, frozenset[str]]] = [(root, scope)]
        while stack:
            node, visible = stack.pop()
            if isinstance(node, list):
                stack.extend((item, visible) for item in node)
            elif isinstance(node, dict):
                stack.extend(self._visit(node, visible))

    def _visit(
        self, node: dict[str, Any], visible: frozenset[str]
    ) -> list[tuple[Any, frozenset[str]]]:
        cls = node.get("class")
        if cls is not None:
            self._expression(node, cls)
            return [(value, visible) for value in node.values()]
        kind = node.get("type")
        if isinstance(kind, str):
            self._check_kind(kind)
            if kind == "BASE_TABLE":
                self._table(node, visible)
        children: list[tuple[Any, frozenset[str]]] = []
        cte_map = node.get("cte_map")
        if cte_map is not None:
            entries = cte_map.get("map") if isinstance(cte_map, dict) else None
            if not isinstance(entries, list):
                raise SqlRejected("sql_unsupported", "unsupported query construct")
            names: list[str] = []
            for entry in entries:
                name = _plain_name(entry.get("key"), "CTE name")
                body = entry.get("value")
                query = body.get("query", {}).get("node") if isinstance(body, dict) else None
                own = (
                    {name}
                    if isinstance(query, dict)
                    and query.get("type") == "RECURSIVE_CTE_NODE"
                    and str(query.get("cte_name", "")).lower() == name
                    else set()
                )
                children.append((body, visible | set(names) | own))
                names.append(name)
            visible = visible | set(names)
        children.extend((value, visible) for key, value in node.items() if key != "cte_map")
        return children

    def _check_kind(self, kind: str) -> None:
        if kind in _KNOWN_TYPES or kind.endswith("_TYPE_INFO"):
            return
        if kind == "TABLE_FUNCTION":
            raise SqlRejected("sql_table_function", "table functions are not allowed")
        raise SqlRejected("sql_unsupported", f"unsupported query construct {kind}")

    def _expression(self, node: dict[str, Any], cls: Any) -> None:
        if cls not in _EXPRESSION_CLASSES:
            if cls == "PARAMETER":
                raise SqlRejected("sql_unsupported", "query parameters are not allowed")
            raise SqlRejected("sql_unsupported", f"unsupported expression {cls}")
        if cls in ("FUNCTION", "WINDOW"):
            name = str(node.get("function_name", ""))
            if node.get("schema") not in ("", "main", None) or node.get("catalog"):
                raise SqlRejected(
                    "sql_forbidden_function", "schema-qualified functions are not allowed"
                )
            if name.lower() not in ALLOWED_FUNCTIONS:
                raise SqlRejected("sql_forbidden_function", f"function {name!r} is not allowed")

    def _table(self, node: dict[str, Any], visible: frozenset[str]) -> None:
        if node.get("schema_name") or node.get("catalog_name"):
            raise SqlRejected("sql_forbidden_relation", "qualified relation names are not allowed")
        name = _plain_name(node.get("table_name"), "relation")
        if name in visible:
            return
        if name not in self.allowed:
            raise SqlRejected("sql_forbidden_relation", f"unknown relation {name!r}")
        self.used.add(name)


def _plain_name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _IDENTIFIER.match(value):
        raise SqlRejected("sql_forbidden_relation", f"{what} must be a plain identifier")
    return value.lower()
