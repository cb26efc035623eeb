"""PASETO v4.public and PASERK: published vectors, an independent implementation, mutations."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyseto
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from verifier import paseto
from verifier.errors import TokenInvalid

# The PASETO project's official v4 vectors (see tests/vectors/README.md).
VECTORS = Path(__file__).resolve().parent / "vectors" / "paseto-v4.json"


def _vectors() -> list[dict[str, Any]]:
    tests: list[dict[str, Any]] = json.loads(VECTORS.read_text())["tests"]
    return [t for t in tests if t["name"] in ("4-S-1", "4-S-2", "4-S-3")]


@pytest.mark.parametrize("vector", _vectors(), ids=lambda v: v["name"])
def test_published_vectors_byte_for_byte(vector: dict[str, Any]) -> None:
    secret = bytes.fromhex(vector["secret-key"])
    seed, public_key = secret[:32], bytes.fromhex(vector["public-key"])
    assert paseto.public_key_of(seed) == public_key == secret[32:]
    message = json.dumps(vector["payload"], separators=(",", ":")).encode()
    footer = vector["footer"].encode()
    assertion = vector["implicit-assertion"].encode()

    token = paseto.sign(message, seed, footer=footer, implicit_assertion=assertion)
    assert token == vector["token"]

    decoded = paseto.split_token(vector["token"])
    assert decoded.footer == footer
    assert paseto.verify(decoded, public_key, implicit_assertion=assertion) == message


def test_vector_with_implicit_assertion_needs_it() -> None:
    vector = _vectors()[2]
    assert vector["implicit-assertion"]
    decoded = paseto.split_token(vector["token"])
    with pytest.raises(TokenInvalid):
        paseto.verify(decoded, bytes.fromhex(vector["public-key"]))


def test_pae_matches_the_specification_examples() -> None:
    assert paseto.pae() == b"\x00" * 8
    assert paseto.pae(b"") == b"\x01" + b"\x00" * 7 + b"\x00" * 8
    assert paseto.pae(b"test") == b"\x01" + b"\x00" * 7 + b"\x04" + b"\x00" * 7 + b"test"


def test_base64url_is_unpadded_and_canonical() -> None:
    assert paseto.b64encode(b"\xff\xfe") == "__4"
    assert paseto.b64decode("__4") == b"\xff\xfe"
    for bad in ("__4=", "__5", "a", "ab+c", "ab/c", "ab c", "é"):
        with pytest.raises(TokenInvalid):
            paseto.b64decode(bad)


def test_paserk_public_and_pid_agree_with_pyseto() -> None:
    seed = bytes(range(32))
    public_key = paseto.public_key_of(seed)
    paserk = paseto.paserk_public(public_key)
    assert paserk.startswith("k4.public.")
    assert paseto.parse_paserk_public(paserk) == public_key
    independent = pyseto.Key.from_paserk(paserk)
    assert independent.to_paserk() == paserk
    assert independent.to_paserk_id() == paseto.paserk_pid(public_key)
    assert paseto.paserk_pid(public_key).startswith("k4.pid.")


def _k4_secret(seed: bytes) -> str:
    # PASERK k4.secret is the 64-byte libsodium secret key: seed || public key.
    return "k4.secret." + paseto.b64encode(seed + paseto.public_key_of(seed))


def test_our_tokens_verify_with_pyseto() -> None:
    seed = bytes(range(1, 33))
    public_key = paseto.public_key_of(seed)
    footer = json.dumps({"kid": paseto.paserk_pid(public_key)}).encode()
    message = b'{"data":"ours","exp":"2099-01-01T00:00:00+00:00"}'
    token = paseto.sign(message, seed, footer=footer)
    decoded = pyseto.decode(pyseto.Key.from_paserk(paseto.paserk_public(public_key)), token)
    assert decoded.payload == message
    assert decoded.footer == footer


def test_pyseto_tokens_verify_with_ours() -> None:
    seed = bytes(range(2, 34))
    public_key = paseto.public_key_of(seed)
    message = b'{"data":"theirs"}'
    footer = b'{"kid":"x"}'
    token = pyseto.encode(pyseto.Key.from_paserk(_k4_secret(seed)), message, footer=footer).decode()
    decoded = paseto.split_token(token)
    assert paseto.verify(decoded, public_key) == message
    assert decoded.footer == footer


def _valid_token() -> tuple[str, bytes]:
    seed = bytes(range(3, 35))
    footer = json.dumps({"kid": paseto.paserk_pid(paseto.public_key_of(seed))}).encode()
    return paseto.sign(b'{"claim":"value"}', seed, footer=footer), paseto.public_key_of(seed)


def _check(token: str, public_key: bytes) -> bytes:
    return paseto.verify(paseto.split_token(token), public_key)


def test_every_single_byte_flip_is_token_invalid() -> None:
    token, public_key = _valid_token()
    raw = token.encode()
    assert _check(token, public_key)
    for i in range(len(raw)):
        for flip in (0x01, 0x20, 0x80):
            mutated = bytearray(raw)
            mutated[i] ^= flip
            with pytest.raises(TokenInvalid):
                _check(mutated.decode("latin-1"), public_key)


def test_truncation_and_footer_swap_are_token_invalid() -> None:
    token, public_key = _valid_token()
    for length in range(len(token)):
        with pytest.raises(TokenInvalid):
            _check(token[:length], public_key)
    body, footer = token.rsplit(".", 1)
    other = paseto.b64encode(b'{"kid":"k4.pid.other"}')
    for swapped in (f"{body}.{other}", body, f"{token}.{footer}", f"{body}.{footer}."):
        with pytest.raises(TokenInvalid):
            _check(swapped, public_key)


@pytest.mark.parametrize(
    "token",
    [
        "v4.local.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAQAr68PS4AXe7If_ZgesdkUMvSwscFlAl1pk5HC0e8k",
        "v3.public." + "A" * 200,
        "v2.public." + "A" * 200,
        "v4.none." + "A" * 200,
        "none." + "A" * 200,
        "V4.PUBLIC." + "A" * 200,
        "v4.public.",
        "v4.public",
        "",
        "v4.public." + "A" * 86,
        "v4.public." + "A" * 10_000,
    ],
)
def test_other_versions_and_purposes_are_refused(token: str) -> None:
    with pytest.raises(TokenInvalid):
        _check(token, bytes(32))


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=400), st.text(max_size=300).map(lambda s: "v4.public." + s)))
def test_parser_raises_only_the_domain_error(text: str) -> None:
    try:
        _check(text, paseto.public_key_of(bytes(32)))
    except TokenInvalid:
        return
    raise AssertionError("an arbitrary string verified")


def test_every_local_vector_is_refused() -> None:
    tests: list[dict[str, Any]] = json.loads(VECTORS.read_text())["tests"]
    local = [t for t in tests if (t.get("token") or "").startswith("v4.local.")]
    assert local
    for vector in local:
        with pytest.raises(TokenInvalid):
            _check(vector["token"], bytes(32))
