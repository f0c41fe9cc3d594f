"""A stream may not take a name reserved for analytics outputs (``analytics_*``): a stream key
is a dataset key and a query relation, and the job's analytics outputs live beside its
streams on the chain. Refused at load with file:line:field, before anything is stored."""

from __future__ import annotations

import pytest

from tests.unit.test_chain_sync_spec import BASE, SOURCE, edit
from trace_core.chain_sync.yamlload import parse_job
from trace_core.errors import ConfigError


@pytest.mark.parametrize("key", ["analytics_native_supply", "analytics_", "analytics_mine"])
def test_a_stream_named_like_an_analytics_output_is_refused(key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_job(edit(BASE, "  logs:\n", f"  {key}:\n"), source=SOURCE)
    err = info.value
    assert (err.file, err.line, err.field) == (SOURCE, 14, f"streams.{key}")
    assert "reserved for analytics outputs" in str(err)


def test_names_that_only_contain_analytics_are_fine() -> None:
    spec, _ = parse_job(edit(BASE, "  logs:\n", "  my_analytics_logs:\n"), source=SOURCE)
    assert "my_analytics_logs" in spec.streams
