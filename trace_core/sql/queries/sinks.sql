-- name: insert_rows
-- A template, filled per destination with psycopg.sql: {table} and {key} are identifiers,
-- {columns} the row model's fields plus source_task_id/source_attempt, {values} named
-- placeholders. First write of a key wins: a duplicated or retried batch changes nothing.
INSERT INTO {table} ({columns}) VALUES ({values})
ON CONFLICT ({key}) DO NOTHING
