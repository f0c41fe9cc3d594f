"""ERC-20 transfer volume per token over one range of logs.

main(tables) gets every input as a pyarrow.Table by name and returns one table: a row per
token contract with the number of Transfer(address,address,uint256) logs and their summed
amount (exact, DECIMAL(38, 0)).
"""

from decimal import Decimal

import pyarrow as pa

TRANSFER = bytes.fromhex("ddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef")


def main(tables):
    logs = tables["logs"]
    counts = {}
    volume = {}
    first_block = {}
    for address, topic0, data, block in zip(
        logs.column("address").to_pylist(),
        logs.column("topic0").to_pylist(),
        logs.column("data").to_pylist(),
        logs.column("block_number").to_pylist(),
        strict=True,
    ):
        if topic0 != TRANSFER or data is None or len(data) != 32:
            continue
        token = "0x" + address.hex()
        counts[token] = counts.get(token, 0) + 1
        volume[token] = volume.get(token, 0) + int.from_bytes(data, "big")
        first_block.setdefault(token, block)
    tokens = sorted(counts)
    return pa.table(
        {
            "token": pa.array(tokens, pa.string()),
            "first_block": pa.array([first_block[t] for t in tokens], pa.uint32()),
            "transfers": pa.array([counts[t] for t in tokens], pa.int64()),
            "volume": pa.array([Decimal(volume[t]) for t in tokens], pa.decimal128(38, 0)),
        }
    )
