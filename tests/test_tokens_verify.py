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
    assert isinstance(decoded.payload, dict) and isinstance(decoded.footer, dict)
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
        # Invalid UTF-8 inside JSON strings, in the first claim and deeper.
        st.binary(max_size=20).map(lambda b: b'{"iss":"' + b + b'"}'),
        st.binary(max_size=20).map(lambda b: b'{"aud":["' + b + b'"],"iss":"x"}'),
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


def test_any_single_byte_flip_of_a_credit_token_is_token_invalid() -> None:
    signer = _signer()
    token = _mint(signer, _claims(signer))
    ring = _ring(signer)
    raw = token.encode()
    for i in range(len(raw)):
        mutated = bytearray(raw)
        mutated[i] ^= 0x04
        with pytest.raises(TokenInvalid):
            vt.verify_credit_token(mutated.decode("latin-1"), ring, now=T0)
    for length in range(len(token)):
        with pytest.raises(TokenInvalid):
            vt.verify_credit_token(token[:length], ring, now=T0)


_NAMES = st.sampled_from(["a", "ab", "a.b", "a.c", "b", "ba"])
_PATTERNS = st.one_of(_NAMES, _NAMES.map(lambda n: n + "*"), st.just("*"), st.just("a.*"))
_MERCHANTS = st.sampled_from(["m1", "m2", "m3"])
_AUDIENCES = st.one_of(st.just(["*"]), st.lists(_MERCHANTS, min_size=1, max_size=3, unique=True))


@settings(max_examples=400, deadline=None)
@given(
    parent_aud=_AUDIENCES,
    parent_tools=st.lists(_PATTERNS, min_size=1, max_size=3),
    parent_max=st.integers(1, 100),
    child_aud=st.none() | _AUDIENCES,
    child_tools=st.none() | st.lists(_PATTERNS, min_size=1, max_size=3),
    child_max=st.none() | st.integers(1, 200),
    cap=st.integers(1, 300),
)
def test_an_accepted_delegation_never_widens_the_scope(
    parent_aud: list[str],
    parent_tools: list[str],
    parent_max: int,
    child_aud: list[str] | None,
    child_tools: list[str] | None,
    child_max: int | None,
    cap: int,
) -> None:
    from issuer.tokens import DelegateRequest, _child_scope
    from ledger.errors import ValidationFailed

    signer = _FUZZ_SIGNER
    parent = _claims(signer, aud=parent_aud, tools=parent_tools, max_per_call=parent_max)
    request = DelegateRequest(
        cap_micros=cap, max_per_call_micros=child_max, audiences=child_aud, tools=child_tools
    )
    try:
        scope = _child_scope(parent, request)
    except (ScopeDenied, ValidationFailed):
        return
    child = _claims(
        signer, aud=scope.audiences, tools=scope.tools, max_per_call=scope.max_per_call_micros
    )
    assert child.max_per_call <= parent.max_per_call
    assert child.max_per_call <= cap
    for merchant in ("m1", "m2", "m3", "m4"):
        for tool in ("a", "ab", "a.b", "a.c", "a.bz", "b", "ba", "c", "abc"):
            try:
                vt.check_scope(child, merchant_id=merchant, tool=tool)
            except ScopeDenied:
                continue
            vt.check_scope(parent, merchant_id=merchant, tool=tool)  # must not raise
