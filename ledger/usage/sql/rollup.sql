-- name: lock_state
-- The roller's lock: whoever holds this row rolls up; another roller skips its turn.
SELECT cursor_seq, horizon_seq, horizon_xmax, horizon_at, complete_through
  FROM usage_rollup_state FOR UPDATE SKIP LOCKED;

-- name: oldest_running_xid
-- The oldest transaction still running (ours included), as of this statement.
SELECT pg_snapshot_xmin(pg_current_snapshot());

-- name: batch_end
-- The last seq of the next batch: at most $3 transfers after the cursor, up to $2.
SELECT max(seq) FROM (
    SELECT seq FROM transfers WHERE seq > $1 AND seq <= $2 ORDER BY seq LIMIT $3
) b;

-- name: contiguous_end
-- The end of the run of visible seqs right after the cursor, at most $2 long: each is
-- committed, and no seq between them is missing, so none can still appear.
SELECT max(seq) FROM (
    SELECT seq, row_number() OVER (ORDER BY seq) AS n
      FROM (SELECT seq FROM transfers WHERE seq > $1 ORDER BY seq LIMIT $2) s
) r WHERE seq = $1 + n;

-- name: roll_up
-- Add the charges, captures and refunds with seq in ($1, $2] to the hourly and daily
-- buckets (UTC). A refund counts in the bucket of its own time, against its charge's
-- account, merchant, credit token and tool.
WITH facts AS MATERIALIZED (
    SELECT c.account_id, c.merchant_id, c.token_jti, c.tool, c.created_at AS at,
           1 AS charges, c.amount_micros AS charged, 0 AS refunds, 0::bigint AS refunded
      FROM transfers t JOIN charges c ON c.id = t.id
     WHERE t.seq > $1 AND t.seq <= $2 AND t.code IN ('charge', 'capture')
    UNION ALL
    SELECT c.account_id, c.merchant_id, c.token_jti, c.tool, f.created_at,
           0, 0, 1, f.amount_micros
      FROM transfers t JOIN refunds f ON f.id = t.id JOIN charges c ON c.id = f.charge_id
     WHERE t.seq > $1 AND t.seq <= $2 AND t.code = 'refund'
), hourly AS (
    INSERT INTO usage_hourly AS u (account_id, bucket, merchant_id, token_jti, tool,
                                   charges, charged_micros, refunds, refunded_micros)
    SELECT account_id, date_trunc('hour', at, 'UTC'), merchant_id, token_jti, tool,
           sum(charges), sum(charged), sum(refunds), sum(refunded)
      FROM facts GROUP BY 1, 2, 3, 4, 5
    ON CONFLICT (account_id, bucket, merchant_id, token_jti, tool) DO UPDATE
       SET charges = u.charges + excluded.charges,
           charged_micros = u.charged_micros + excluded.charged_micros,
           refunds = u.refunds + excluded.refunds,
           refunded_micros = u.refunded_micros + excluded.refunded_micros
    RETURNING 1
), daily AS (
    INSERT INTO usage_daily AS u (account_id, bucket, merchant_id, token_jti, tool,
                                  charges, charged_micros, refunds, refunded_micros)
    SELECT account_id, date_trunc('day', at, 'UTC'), merchant_id, token_jti, tool,
           sum(charges), sum(charged), sum(refunds), sum(refunded)
      FROM facts GROUP BY 1, 2, 3, 4, 5
    ON CONFLICT (account_id, bucket, merchant_id, token_jti, tool) DO UPDATE
       SET charges = u.charges + excluded.charges,
           charged_micros = u.charged_micros + excluded.charged_micros,
           refunds = u.refunds + excluded.refunds,
           refunded_micros = u.refunded_micros + excluded.refunded_micros
    RETURNING 1
)
SELECT (SELECT count(*) FROM facts) AS movements,
       (SELECT count(*) FROM hourly) + (SELECT count(*) FROM daily) AS buckets;

-- name: last_seq_handed_out
-- The last seq any transaction took (committed or not), and when we looked. Read
-- BEFORE the snapshot below: every seq up to it belongs to a transaction that already
-- had its xid (every money movement locks rows first), so older than that snapshot's xmax.
SELECT coalesce(pg_sequence_last_value(pg_get_serial_sequence('transfers', 'seq')), 0) AS seq,
       clock_timestamp() AS at;

-- name: next_xid
SELECT pg_snapshot_xmax(pg_current_snapshot());

-- name: save_state
UPDATE usage_rollup_state
   SET cursor_seq = $1, horizon_seq = $2, horizon_xmax = $3, horizon_at = $4,
       complete_through = $5, updated_at = now();

-- name: freshness
SELECT complete_through, extract(epoch FROM clock_timestamp() - complete_through)::float8 AS lag_s
  FROM usage_rollup_state;
