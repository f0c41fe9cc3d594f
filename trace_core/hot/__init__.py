"""The hot path: block follower at the chain tip, reorg repair, hot tables, compaction to cold."""
