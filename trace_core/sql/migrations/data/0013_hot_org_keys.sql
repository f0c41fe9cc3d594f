-- depends: 0011_rls
-- Hot rows are keyed by org (issue 22): each org's job follows a chain through its own RPC, so
-- two orgs following one chain hold their own rows of the same blocks. Keys and indexes put
-- org_id first; existing rows keep the org 0010 stamped (the default org, or the deployment's).
ALTER TABLE data.hot_blocks DROP CONSTRAINT hot_blocks_pkey,
    ADD PRIMARY KEY (org_id, chain_id, block_number);
ALTER TABLE data.hot_transactions DROP CONSTRAINT hot_transactions_pkey,
    ADD PRIMARY KEY (org_id, chain_id, block_number, transaction_index);
ALTER TABLE data.hot_logs DROP CONSTRAINT hot_logs_pkey,
    ADD PRIMARY KEY (org_id, chain_id, block_number, log_index);

DROP INDEX data.data_invalidations_chain_idx;
CREATE INDEX data_invalidations_chain_idx
    ON data.data_invalidations (org_id, chain_id, detected_at);
