"""Events for tokens with many transfers in one range: rows in (a pyarrow.Table), events out.

Each event is a dict; ``block_number`` is required, the dedupe_key template's columns
(token, first_block) must be present, and every other key is kept in the event's payload.
"""

THRESHOLD = 20


def main(rows):
    events = []
    for row in rows.to_pylist():
        if row["transfers"] >= THRESHOLD:
            events.append(
                {
                    "block_number": row["first_block"],
                    "token": row["token"],
                    "first_block": row["first_block"],
                    "transfers": row["transfers"],
                    "volume": str(row["volume"]),
                }
            )
    return events
