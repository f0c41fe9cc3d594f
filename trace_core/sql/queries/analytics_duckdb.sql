-- Analytics (DuckDB). Inputs are temp views created by trace_core.analytics over committed
-- Parquet: `diffs` (cryo geth_balance_diffs / balance_diffs), `logs` (cryo logs), and the
-- analytics' own committed outputs. Balances are DECIMAL(38,0): exact wei, never floats;
-- a value past 38 digits fails the cast instead of rounding. Parameters use $name.

-- name: macros
-- via HUGEINT: DuckDB 1.5 parses VARCHAR -> DECIMAL(38,0) ~300x slower than -> HUGEINT.
CREATE OR REPLACE TEMP MACRO wei(s) AS CAST(CAST(s AS HUGEINT) AS DECIMAL(38,0));
-- 32-byte big-endian word i (0-based) of a blob as DECIMAL(38,0); errors past 2**128.
CREATE OR REPLACE TEMP MACRO u256_word(b, i) AS (
    CASE WHEN substr(hex(b), i * 64 + 1, 32) <> repeat('0', 32)
         THEN error('a uint256 value exceeds 2**128')
         ELSE CAST(
             CAST(CAST('0x' || substr(hex(b), i * 64 + 33, 16) AS UBIGINT) AS HUGEINT)
                 * CAST('18446744073709551616' AS HUGEINT)
             + CAST(CAST('0x' || substr(hex(b), i * 64 + 49, 16) AS UBIGINT) AS HUGEINT)
             AS DECIMAL(38,0))
    END);
CREATE OR REPLACE TEMP MACRO hex_address(b) AS '0x' || lower(hex(b));

-- name: balance_changes
-- One row per (block, address) whose balance changed in the block: the balance after the
-- block's last transaction touching it and the net change (sum of to - from over its diffs).
SELECT CAST(block_number AS UBIGINT) AS block_number,
       hex_address(address) AS address,
       wei(arg_max(to_value_string, transaction_index)) AS balance,
       sum(wei(to_value_string) - wei(from_value_string)) AS delta
FROM diffs
GROUP BY block_number, address
HAVING sum(wei(to_value_string) - wei(from_value_string)) <> 0
    OR wei(arg_max(to_value_string, transaction_index)) <> wei(arg_min(from_value_string, transaction_index))
ORDER BY block_number, address

-- name: supply_deltas
-- Net native supply change per block (minted > 0, burned > 0; both never at once). Balances
-- of the $burn addresses are out of circulation: what they receive counts as burned.
SELECT block_number,
       CAST(sum(delta) AS DECIMAL(38,0)) AS supply_delta,
       CAST(greatest(sum(delta), 0) AS DECIMAL(38,0)) AS minted,
       CAST(greatest(-sum(delta), 0) AS DECIMAL(38,0)) AS burned,
       CAST(count(*) AS UINTEGER) AS accounts_changed
FROM balance_changes
WHERE NOT list_contains(CAST($burn AS VARCHAR[]), address)
GROUP BY block_number
ORDER BY block_number

-- name: native_supply
-- Supply at the end of every block of [$lo, $hi): genesis + all supply deltas up to it.
WITH before AS (
    SELECT coalesce(sum(supply_delta), 0) AS s FROM supply_deltas WHERE block_number < $lo
), blocks AS (
    SELECT CAST(range AS UBIGINT) AS block_number FROM range($lo, $hi)
)
SELECT b.block_number,
       CAST(wei($genesis) + before.s
            + sum(coalesce(d.supply_delta, 0)) OVER (ORDER BY b.block_number)
            AS DECIMAL(38,0)) AS supply,
       CAST(coalesce(d.supply_delta, 0) AS DECIMAL(38,0)) AS supply_delta
FROM blocks b
LEFT JOIN supply_deltas d ON d.block_number = b.block_number
CROSS JOIN before
ORDER BY b.block_number

-- name: native_supply_fold
-- The window [$lo, $hi) from an earlier roll-up `prev_supply` (rows up to $from - 1) and the
-- deltas of the new blocks [$from, $hi) only: the supply carries on from prev's last block.
WITH carry AS (
    SELECT supply FROM prev_supply WHERE block_number = $from - 1
), blocks AS (
    SELECT CAST(range AS UBIGINT) AS block_number FROM range($from, $hi)
), fresh AS (
    SELECT b.block_number,
           CAST(carry.supply + sum(coalesce(d.supply_delta, 0)) OVER (ORDER BY b.block_number)
                AS DECIMAL(38,0)) AS supply,
           CAST(coalesce(d.supply_delta, 0) AS DECIMAL(38,0)) AS supply_delta
    FROM blocks b
    LEFT JOIN supply_deltas d ON d.block_number = b.block_number
    CROSS JOIN carry
)
SELECT block_number, supply, supply_delta FROM prev_supply
WHERE block_number >= $lo AND block_number < $from
UNION ALL
SELECT block_number, supply, supply_delta FROM fresh WHERE block_number >= $lo
ORDER BY block_number

-- name: charged_gas_blocks
-- Gas charged per block, Ethereum's way: the block's gas_used.
SELECT block_number, CAST(gas_used AS HUGEINT) AS gas FROM chain_blocks

-- name: charged_gas_transactions
-- Gas charged per block from its transactions: $charge (gas_limit: Monad, no refund; or
-- gas_used) of every transaction but the free system ones (sent by $system).
SELECT block_number,
       sum(CAST(CASE WHEN $charge = 'gas_limit' THEN gas_limit ELSE gas_used END AS HUGEINT)) AS gas
FROM chain_transactions
WHERE from_address <> from_hex($system)
GROUP BY block_number

-- name: supply_reconcile
-- Per block of `chain_blocks` (cryo blocks): the net supply change (`supply_deltas`, 0 when
-- absent) against the protocol's: the reward of `reward_schedule` in force (none at genesis)
-- minted, base fee * `charged_gas` burned.
WITH per_block AS (
    SELECT b.block_number,
           CAST(coalesce(d.supply_delta, 0) AS DECIMAL(38,0)) AS observed,
           CAST(CASE WHEN b.block_number > 0 THEN coalesce(r.wei, 0) ELSE 0 END AS DECIMAL(38,0))
               AS minted,
           CAST(CAST(coalesce(b.base_fee_per_gas, 0) AS HUGEINT) * coalesce(g.gas, 0)
                AS DECIMAL(38,0)) AS burned
    FROM chain_blocks b
    LEFT JOIN supply_deltas d ON d.block_number = b.block_number
    LEFT JOIN charged_gas g ON g.block_number = b.block_number
    ASOF LEFT JOIN reward_schedule r ON CAST(b.block_number AS BIGINT) >= r.from_block
), wrong AS (
    SELECT * FROM per_block WHERE observed <> minted - burned
)
SELECT (SELECT count(*) FROM per_block) AS blocks,
       (SELECT count(*) FROM wrong) AS unexplained,
       (SELECT min(block_number) FROM wrong) AS first_unexplained,
       (SELECT CAST(sum(minted) AS VARCHAR) FROM per_block) AS minted,
       (SELECT CAST(sum(burned) AS VARCHAR) FROM per_block) AS burned,
       (SELECT [CAST(observed AS VARCHAR), CAST(minted - burned AS VARCHAR)]
        FROM wrong ORDER BY block_number LIMIT 1) AS first_observed_expected

-- name: latest_balances
-- Every account's balance at the end of the span: its last change in `balance_changes`, else
-- its balance in `carry` (the genesis allocation, block -1; or, folding, the previous
-- roll-up's balances at their last change).
SELECT address, arg_max(balance, block_number) AS balance,
       max(block_number) AS last_changed_block
FROM (
    SELECT address, balance, CAST(block_number AS BIGINT) AS block_number FROM balance_changes
    UNION ALL
    SELECT address, balance, block_number FROM carry
)
GROUP BY address

-- name: carry_genesis
SELECT address, balance, CAST(-1 AS BIGINT) AS block_number FROM genesis

-- name: carry_balances
SELECT address, balance, coalesce(CAST(last_changed_block AS BIGINT), -1) AS block_number
FROM prev_balances

-- name: account_balances
SELECT address, balance,
       CAST(nullif(last_changed_block, -1) AS UBIGINT) AS last_changed_block,
       CAST($as_of AS UBIGINT) AS block_number
FROM latest_balances
ORDER BY address

-- name: top_accounts
SELECT CAST(row_number() OVER (ORDER BY balance DESC, address) AS UINTEGER) AS rank,
       address, balance,
       CAST(nullif(last_changed_block, -1) AS UBIGINT) AS last_changed_block,
       CAST($as_of AS UBIGINT) AS block_number
FROM latest_balances
ORDER BY balance DESC, address
LIMIT $top_n

-- name: top_account_history
-- The balance of each account of `hist_top` (rank, address) at every point of `hist_points`:
-- its last change in `hist_changes` up to the point, else its balance in `hist_base`, else 0.
WITH grid AS (
    SELECT t.rank, t.address, CAST(p.block_number AS BIGINT) AS block_number
    FROM hist_top t CROSS JOIN hist_points p
), changes AS (
    SELECT address, CAST(block_number AS BIGINT) AS block_number, balance FROM hist_changes
    WHERE address IN (SELECT address FROM hist_top)
)
SELECT CAST(g.block_number AS UBIGINT) AS block_number, g.rank, g.address,
       CAST(coalesce(c.balance, base.balance, 0) AS DECIMAL(38,0)) AS balance
FROM grid g
ASOF LEFT JOIN changes c ON c.address = g.address AND c.block_number <= g.block_number
LEFT JOIN hist_base base ON base.address = g.address

-- name: top_account_history_kept
-- Folding: rows of the previous history `prev_history` for accounts still on top, at the
-- points before $from that remain, with their new rank.
SELECT h.block_number, t.rank, h.address, h.balance
FROM prev_history h JOIN top_accounts t ON t.address = h.address
WHERE h.block_number < $from AND h.block_number IN (SELECT block_number FROM points)

-- name: staking_events
-- Monad staking precompile events (IMonadStaking ABI) emitted by $address (ValidatorRewarded:
-- the block reward, amount = reward). stake_delta: +amount on Delegate, -amount on
-- Undelegate, 0 otherwise (stake counts from the event's
-- block, not from its activation epoch).
SELECT CAST(block_number AS UBIGINT) AS block_number,
       transaction_index, log_index,
       '0x' || lower(hex(transaction_hash)) AS transaction_hash,
       CASE hex(topic0)
           WHEN upper($delegate) THEN 'delegate'
           WHEN upper($undelegate) THEN 'undelegate'
           WHEN upper($withdraw) THEN 'withdraw'
           WHEN upper($claim_rewards) THEN 'claim_rewards'
           WHEN upper($validator_created) THEN 'validator_created'
           WHEN upper($validator_rewarded) THEN 'validator_rewarded'
       END AS event,
       CAST('0x' || substr(hex(topic1), 49, 16) AS UBIGINT) AS validator_id,
       '0x' || lower(substr(hex(topic2), 25, 40)) AS address,
       CASE hex(topic0)
           WHEN upper($delegate) THEN u256_word(data, 0)
           WHEN upper($undelegate) THEN u256_word(data, 1)
           WHEN upper($withdraw) THEN u256_word(data, 1)
           WHEN upper($claim_rewards) THEN u256_word(data, 0)
           WHEN upper($validator_rewarded) THEN u256_word(data, 0)
           ELSE CAST(0 AS DECIMAL(38,0))
       END AS amount,
       CASE hex(topic0)
           WHEN upper($delegate) THEN u256_word(data, 0)
           WHEN upper($undelegate) THEN -u256_word(data, 1)
           ELSE CAST(0 AS DECIMAL(38,0))
       END AS stake_delta
FROM logs
WHERE address = from_hex($address)
  AND hex(topic0) IN (upper($delegate), upper($undelegate), upper($withdraw),
                      upper($claim_rewards), upper($validator_created),
                      upper($validator_rewarded))
ORDER BY block_number, log_index

-- name: carry_stake_none
SELECT CAST(NULL AS UBIGINT) AS validator_id, CAST(NULL AS VARCHAR) AS delegator,
       CAST(NULL AS DECIMAL(38,0)) AS stake
WHERE false

-- name: carry_stake_prev
SELECT validator_id, delegator, stake FROM prev_delegators

-- name: stake_moves
-- Stake moves: Delegate/Undelegate events of `staking_events`, plus the carried net stakes of
-- `carry_stake` (folding: the previous roll-up's, at the end before these events) as block 0.
SELECT block_number, validator_id, address AS delegator, stake_delta
FROM staking_events WHERE event IN ('delegate', 'undelegate')
UNION ALL
SELECT CAST(0 AS UBIGINT), validator_id, delegator, stake FROM carry_stake

-- name: delegator_stake
-- Net stake per (validator, delegator) at the end (pairs that net to zero left out).
SELECT validator_id, delegator, CAST(sum(stake_delta) AS DECIMAL(38,0)) AS stake,
       CAST($as_of AS UBIGINT) AS block_number
FROM stake_moves
GROUP BY validator_id, delegator
HAVING sum(stake_delta) <> 0
ORDER BY validator_id, delegator

-- name: validator_stake
-- Per validator at each point: stake of delegators with a positive net stake, and their count.
WITH net AS (
    SELECT p.block_number, m.validator_id, m.delegator, sum(m.stake_delta) AS stake
    FROM points p JOIN stake_moves m ON m.block_number <= p.block_number
    GROUP BY p.block_number, m.validator_id, m.delegator
)
SELECT CAST(block_number AS UBIGINT) AS block_number, validator_id,
       CAST(sum(stake) AS DECIMAL(38,0)) AS stake,
       CAST(count(*) AS UINTEGER) AS delegators
FROM net WHERE stake > 0
GROUP BY block_number, validator_id
