"""The forward-only migrations (`NNNN_name.sql`), shipped inside the package as
`ledger.migrations` so that an installed service can migrate its database."""
