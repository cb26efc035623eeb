"""Usage analytics and operator lists: what was spent, where, on what, by whom.

- `rollup`: one writer folds charges and refunds into hourly and daily buckets.
- `reports`: usage by credit token, tool, merchant, account and time bucket; the
  charges, holds and refunds listings; operator lists of accounts and merchants.
- `export`: any of those as CSV or NDJSON, streamed.
- `api`: the HTTP routes (`/v1/usage…`, `GET /v1/accounts`, `GET /v1/merchants`).
"""
