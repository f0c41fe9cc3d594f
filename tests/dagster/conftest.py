"""Dagster-side fixtures: Trace settings in the environment (as users configure it)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from dagster import DagsterInstance, instance_for_test

from trace_core.runtime import Runtime
from trace_core.settings import Settings, load_settings


@pytest.fixture
def trace_env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Runtime:
    """Point TRACE_* at this test's databases and home; return a Runtime built from env."""
    assert settings.state_url and settings.data_url
    monkeypatch.setenv("TRACE_HOME", str(settings.home))
    monkeypatch.setenv("TRACE_STATE_URL", settings.state_url.get_secret_value())
    monkeypatch.setenv("TRACE_DATA_URL", settings.data_url.get_secret_value())
    monkeypatch.setenv("TRACE_RETRY_BASE_SECONDS", "0")
    monkeypatch.setenv("TRACE_HEARTBEAT_SECONDS", "1")
    return Runtime(load_settings())


@pytest.fixture
def dagster_instance() -> Iterator[DagsterInstance]:
    with instance_for_test() as instance:
        yield instance
