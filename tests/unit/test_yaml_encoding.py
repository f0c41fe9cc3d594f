"""A spec file that is not UTF-8 is refused with one line naming the file, the line and the
encoding, never a PyYAML traceback (``trace-lite apply`` reads the file before any database)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from trace_core.chain_sync.yamlload import load_job_file
from trace_core.cli.main import cli
from trace_core.errors import ConfigError

LATIN1_JOB = "kind: chain_sync\nname: caf\xe9\nchain_id: 1\n".encode("latin-1")


def test_a_latin1_job_file_names_the_file_line_and_encoding(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_bytes(LATIN1_JOB)
    with pytest.raises(ConfigError) as err:
        load_job_file(path)
    assert str(err.value).startswith(f"{path}:2: not UTF-8 text: byte 0xe9")

    result = CliRunner().invoke(cli, ["apply", "--file", str(path)])
    assert result.exit_code == 2
    assert " ".join(result.stderr.split()) == f"error: {err.value}"  # rich wraps at 80
    assert "Traceback" not in result.output


def test_a_utf16_file_with_its_byte_order_mark_still_reads(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_bytes("kind: chain_sync\nname: café\n".encode("utf-16"))
    with pytest.raises(ConfigError) as err:  # PyYAML decodes it; validation names what is missing
        load_job_file(path)
    assert "UTF-8" not in str(err.value)
