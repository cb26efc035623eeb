-- name: scrape_gauges
-- What /metrics reads from the database at scrape time (cheap: partial indexes and
-- one-row tables). Holds past expiry still pending are the sweeper's backlog.
SELECT
    (SELECT count(*) FROM holds WHERE status = 'pending') AS holds_pending,
    (SELECT count(*) FROM holds WHERE status = 'pending' AND expires_at <= now()) AS holds_expired_backlog;

-- name: usdc_watchers
-- Each USDC watcher's progress (one row per configured chain and contract).
SELECT chain_id, next_block, halted_reason IS NOT NULL AS halted,
       extract(epoch FROM now() - updated_at)::float8 AS seconds_since_progress
  FROM usdc_cursors;
