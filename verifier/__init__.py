"""Verifier: credit-token verification, verify-and-debit, holds, receipts, SDK, MCP."""
