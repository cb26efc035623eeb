"""Issuer: signing keys, credit-token minting, revocation, delegation, top-ups."""
