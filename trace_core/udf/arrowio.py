"""Arrow IPC stream bytes <-> ``pyarrow.Table``: how tables travel in ``UdfInvocationPayload``
(``tables``) and ``UdfResult`` (``table``)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.ipc as ipc


def table_to_ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def ipc_to_table(data: bytes) -> pa.Table:
    """Zero-copy: the table's buffers point into ``data``."""
    return ipc.open_stream(pa.py_buffer(data)).read_all()
