"""The double-entry core: accounts, transfers, balances, invariants, database, app and CLI."""
