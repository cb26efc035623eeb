-- Plan every statement of ledger_charge_batch afresh on each call.
--
-- A session caches the plans of a PL/pgSQL function the first time it runs it. The
-- charge batcher keeps its connections for the life of the process, so a service
-- started on a young database kept plans made while `charges` was nearly empty:
-- the idempotency lookup then walked the merchant's charges through
-- `charges_merchant` and filtered on the key, instead of probing the unique
-- (merchant, key) index; each batch got slower with every charge the merchant had
-- ever taken, until autovacuum happened to analyze the table. Custom plans use the
-- tables' current sizes, so the lookup stays an index probe whatever the age of
-- the session. Planning costs well under a millisecond per batch.
ALTER FUNCTION ledger_charge_batch(uuid[], text[], uuid[], uuid[], text[], bytea[], uuid[], text[],
                                   bigint[], uuid[], text[], integer[], jsonb[])
    SET plan_cache_mode = force_custom_plan;
