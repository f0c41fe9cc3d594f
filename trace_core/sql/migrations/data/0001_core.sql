-- Data database: user-facing tables. Operators never write here directly (sinks do).
CREATE SCHEMA IF NOT EXISTS data;
