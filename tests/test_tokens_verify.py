"""Offline credit-token verification: claims, kid, purpose, time window, scope, fuzzing."""

from __future__ import annotations

import json
import secrets
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pyseto
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from issuer.keys import Signer
from verifier import paseto
from verifier import tokens as vt
from verifier.errors import ScopeDenied, TokenExpired, TokenInvalid, TokenNotYetValid

T0 = datetime(2030, 1, 1, tzinfo=UTC)


def _signer(purpose: vt.KeyPurpose = "credit_token") -> Signer:
    seed = secrets.token_bytes(32)
    return Signer(kid=paseto.paserk_pid(paseto.public_key_of(seed)), purpose=purpose, seed=seed)


def _ring(*signers: Signer) -> vt.KeyRing:
    return vt.KeyRing(
        vt.PublicKey(kid=s.kid, purpose=s.purpose, public_key=s.public_key, state="active")
        for s in signers
    )


def _claims(signer: Signer, **overrides: Any) -> vt.CreditTokenClaims:
    fields: dict[str, Any] = dict(
        jti=uuid.uuid4(),
        sub=uuid.uuid4(),
        iss="https://ledger.example",
        iat=T0,
        nbf=T0,
        exp=T0 + timedelta(hours=1),
        aud=["*"],
        tools=["search.*", "fetch"],
        max_per_call=1_000,
        cap=10_000,
        parent=None,
        kid=signer.kid,
    )
    fields.update(overrides)
    return vt.CreditTokenClaims(**fields)


def _mint(signer: Signer, claims: vt.CreditTokenClaims) -> str:
    return signer.sign(vt.encode_claims(claims), footer=vt.encode_footer(signer.kid))


def test_round_trip_returns_the_claims() -> None:
    signer = _signer()
    claims = _claims(signer)
    assert vt.verify_credit_token(_mint(signer, claims), _ring(signer), now=T0) == claims


def test_pyseto_verifies_our_credit_tokens_and_we_verify_its() -> None:
    signer = _signer()
    now = datetime.now(UTC).replace(microsecond=0)
    claims = _claims(signer, iat=now, nbf=now, exp=now + timedelta(hours=1))
    token = _mint(signer, claims)
    public = pyseto.Key.from_paserk(paseto.paserk_public(signer.public_key))
    decoded = pyseto.decode(public, token, deserializer=json)
    assert decoded.payload["jti"] == str(claims.jti)
    assert decoded.footer["kid"] == signer.kid == public.to_paserk_id()

    # A token pyseto signs with our footer and claims verifies with ours.
    seed = secrets.token_bytes(32)
    theirs = Signer(
        kid=paseto.paserk_pid(paseto.public_key_of(seed)), purpose="credit_token", seed=seed
    )
    secret = pyseto.Key.from_paserk(
        "k4.secret." + paseto.b64encode(seed + paseto.public_key_of(seed))
    )
    message = vt.encode_claims(_claims(theirs))
    token = pyseto.encode(secret, message, footer=vt.encode_footer(theirs.kid)).decode()
    assert vt.verify_credit_token(token, _ring(theirs), now=T0).kid == theirs.kid


def test_time_window_with_leeway() -> None:
    signer = _signer()
    claims = _claims(signer)
    token, ring = _mint(signer, claims), _ring(signer)
    vt.verify_credit_token(token, ring, now=T0 - timedelta(seconds=30))
    with pytest.raises(TokenNotYetValid):
        vt.verify_credit_token(token, ring, now=T0 - timedelta(seconds=31))
    with pytest.raises(TokenNotYetValid):
        vt.verify_credit_token(token, ring, now=T0 - timedelta(seconds=1), leeway_s=0)
    vt.verify_credit_token(token, ring, now=claims.exp + timedelta(seconds=29))
    with pytest.raises(TokenExpired):
        vt.verify_credit_token(token, ring, now=claims.exp + timedelta(seconds=30))
    with pytest.raises(TokenExpired):
        vt.verify_credit_token(token, ring, now=claims.exp, leeway_s=0)


def test_unknown_kid_wrong_purpose_and_other_keys_are_token_invalid() -> None:
    signer, other = _signer(), _signer()
    token = _mint(signer, _claims(signer))
    with pytest.raises(TokenInvalid):
        vt.verify_credit_token(token, _ring(other), now=T0)
    with pytest.raises(TokenInvalid):
        vt.verify_credit_token(token, vt.KeyRing([]), now=T0)
    receipt_signer = _signer("receipt")
    receipt_like = _mint(receipt_signer, _claims(receipt_signer))
    with pytest.raises(TokenInvalid):
        vt.verify_credit_token(receipt_like, _ring(signer, receipt_signer), now=T0)
    # Right kid in the footer, but signed by another key.
    forged = other.sign(vt.encode_claims(_claims(signer)), footer=vt.encode_footer(signer.kid))
    with pytest.raises(TokenInvalid):
        vt.verify_credit_token(forged, _ring(signer, other), now=T0)


def test_missing_or_odd_footer_is_token_invalid() -> None:
    signer = _signer()
    message = vt.encode_claims(_claims(signer))
    ring = _ring(signer)
    for footer in (
        b"",
        b"{}",
        b'{"kid":1}',
        b"not json",
        json.dumps({"kid": signer.kid, "x": 1}).encode(),
    ):
        token = signer.sign(message, footer=footer)
        with pytest.raises(TokenInvalid):
            vt.verify_credit_token(token, ring, now=T0)


def _signed_payload(signer: Signer, payload: dict[str, Any]) -> str:
    return signer.sign(json.dumps(payload).encode(), footer=vt.encode_footer(signer.kid))


def test_claims_must_be_present_and_well_typed() -> None:
    signer = _signer()
    good = json.loads(vt.encode_claims(_claims(signer)))
    ring = _ring(signer)
    broken: list[dict[str, Any]] = []
    for name in good:
        if name != "parent":
            broken.append({k: v for k, v in good.items() if k != name})
    broken += [
        {**good, "cap": "10"},
        {**good, "cap": 0},
        {**good, "cap": vt.CAP_MAX + 1},
        {**good, "max_per_call": 1.5},
        {**good, "exp": "2030-01-01T00:00:00"},  # no time zone
        {**good, "exp": 1893456000},
        {**good, "nbf": good["exp"]},
        {**good, "aud": []},
        {**good, "aud": ["*", "m1"]},
        {**good, "aud": "*"},
        {**good, "tools": ["bad tool"]},
        {**good, "tools": ["*"] * (vt.TOOLS_MAX + 1)},
        {**good, "sub": "alice"},
        {**good, "extra": True},
    ]
    for payload in broken:
        with pytest.raises(TokenInvalid):
            vt.verify_credit_token(_signed_payload(signer, payload), ring, now=T0)
    for bad_json in (b"[]", b"null", b"{", b"\xff"):
        with pytest.raises(TokenInvalid):
            vt.verify_credit_token(
                signer.sign(bad_json, footer=vt.encode_footer(signer.kid)), ring, now=T0
            )


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=500))
def test_fuzzed_strings_raise_only_domain_errors(text: str) -> None:
    ring = _ring(_FUZZ_SIGNER)
    with pytest.raises(TokenInvalid):
        vt.verify_credit_token(text, ring, now=T0)
    with pytest.raises(TokenInvalid):
        vt.verify_credit_token("v4.public." + text, ring, now=T0)


_FUZZ_SIGNER = _signer()


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=300),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
            lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=6),
            max_leaves=20,
        ).map(lambda v: json.dumps(v).encode()),
    )
)
def test_fuzzed_signed_payloads_raise_only_domain_errors(message: bytes) -> None:
    # Validly signed, arbitrary claims: the claim parser is the last line of defence.
    token = _FUZZ_SIGNER.sign(message, footer=vt.encode_footer(_FUZZ_SIGNER.kid))
    try:
        vt.verify_credit_token(token, _ring(_FUZZ_SIGNER), now=T0)
    except (TokenInvalid, TokenExpired, TokenNotYetValid):
        return


def test_check_scope_audience_and_tools() -> None:
    signer = _signer()
    merchant = str(uuid.uuid4())
    claims = _claims(signer, aud=[merchant], tools=["search.*", "fetch"])
    vt.check_scope(claims, merchant_id=merchant, tool="search.web")
    vt.check_scope(claims, merchant_id=merchant, tool="fetch")
    for merchant_id, tool in (
        (str(uuid.uuid4()), "fetch"),
        (merchant, "fetch2"),
        (merchant, "searc"),
        (merchant, "other"),
        (merchant, "bad tool"),
    ):
        with pytest.raises(ScopeDenied):
            vt.check_scope(claims, merchant_id=merchant_id, tool=tool)
    anywhere = _claims(signer, aud=["*"], tools=["*"])
    vt.check_scope(anywhere, merchant_id=str(uuid.uuid4()), tool="anything")


def test_pattern_coverage_never_widens() -> None:
    assert vt.tool_pattern_covers("*", "*")
    assert vt.tool_pattern_covers("search.*", "search.web")
    assert vt.tool_pattern_covers("search.*", "search.web.*")
    assert not vt.tool_pattern_covers("search.*", "*")
    assert not vt.tool_pattern_covers("search.*", "sea*")
    assert not vt.tool_pattern_covers("fetch", "fetch*")
    assert not vt.audience_covers(["m1"], ["*"])
    assert not vt.audience_covers(["m1"], ["m1", "m2"])
    assert vt.audience_covers(["*"], ["m9"])


def test_keyring_from_published_document_refuses_mismatched_kid() -> None:
    a, b = _signer(), _signer()
    document = _ring(a).published()
    entries = [
        {"kid": k.kid, "paserk": k.paserk, "purpose": k.purpose, "state": k.state}
        for k in document.keys
    ]
    ring = vt.KeyRing.from_published(json.dumps({"keys": entries}).encode())
    assert ring.get(a.kid, "credit_token") is not None
    lying = {"keys": [{"kid": b.kid, "paserk": paseto.paserk_public(a.public_key),
                       "purpose": "credit_token", "state": "active"}]}  # fmt: skip
    with pytest.raises(TokenInvalid):
        vt.KeyRing.from_published(lying)
