"""Dashboard routes (not part of the API document): sign-in, pages, sign-out, top-up."""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Annotated, Any

import asyncpg
import jinja2
from litestar import Request, Response, get, post
from litestar.datastructures import Cookie
from litestar.params import QueryParameter
from litestar.response import Redirect

from issuer.topups.card import CardTopupCreate, create_card_topup
from ledger.access.api_keys import AuthCache, Role
from ledger.config import Settings
from ledger.dashboard import pages
from ledger.dashboard.sessions import COOKIE, Session, end_session, find_session, start_session
from ledger.errors import LedgerError, Unauthenticated

__all__ = ["routes"]

HERE = Path(__file__).parent
FORM_FIELD_LENGTH_MAX = 300
CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
_templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=True,  # everything a user typed is text
    undefined=jinja2.StrictUndefined,
)
_templates.filters["usd"] = pages.usd
_STYLESHEET = (HERE / "static" / "dashboard.css").read_bytes()


def _html(template: str, context: dict[str, Any], status: int = 200) -> Response[str]:
    body = _templates.get_template(template).render(**context)
    return Response(body, status_code=status, media_type="text/html", headers=SECURITY_HEADERS)


def _pool(request: Request[Any, Any, Any]) -> asyncpg.Pool:
    pool: asyncpg.Pool = request.app.state.pool
    return pool


async def _form(request: Request[Any, Any, Any]) -> dict[str, str]:
    form = await request.form()
    return {k: str(v)[:FORM_FIELD_LENGTH_MAX] for k, v in form.items() if isinstance(v, str)}


async def _session(request: Request[Any, Any, Any]) -> Session | None:
    return await find_session(_pool(request), request.cookies.get(COOKIE))


def _cookie(request: Request[Any, Any, Any], value: str, max_age: int) -> Cookie:
    settings: Settings = request.app.state.settings
    return Cookie(
        key=COOKIE,
        value=value,
        path="/dashboard",
        max_age=max_age,
        httponly=True,
        samesite="strict",
        secure=settings.base_url.startswith("https://"),
    )


def _checked(session: Session | None, form: dict[str, str]) -> Session:
    if session is None or not hmac.compare_digest(form.get("csrf", ""), session.csrf_token):
        raise Unauthenticated("sign in again")
    return session


@get("/dashboard", include_in_schema=False)
async def sign_in_page(request: Request[Any, Any, Any]) -> Response[Any]:
    if await _session(request) is not None:
        return Redirect("/dashboard/home", headers=SECURITY_HEADERS)
    return _html("sign_in.html", {"error": None})


@post("/dashboard/sign-in", include_in_schema=False, status_code=303)
async def sign_in(request: Request[Any, Any, Any]) -> Response[Any]:
    form = await _form(request)
    cache: AuthCache = request.app.state.auth_cache
    try:
        principal = await cache.authenticate(_pool(request), f"Bearer {form.get('api_key', '')}")
    except LedgerError:
        return _html("sign_in.html", {"error": "That API key is not valid."}, status=401)
    settings: Settings = request.app.state.settings
    session_id, _ = await start_session(_pool(request), principal, settings.dashboard_session_s)
    return Redirect(
        "/dashboard/home",
        status_code=303,
        headers=SECURITY_HEADERS,
        cookies=[_cookie(request, session_id, settings.dashboard_session_s)],
    )


@get("/dashboard/home", include_in_schema=False)
async def home(
    request: Request[Any, Any, Any],
    q: Annotated[
        str | None, QueryParameter(required=False, max_length=FORM_FIELD_LENGTH_MAX)
    ] = None,
    audit: Annotated[bool, QueryParameter(required=False)] = False,
) -> Response[Any]:
    session = await _session(request)
    if session is None:
        return Redirect("/dashboard", headers=SECURITY_HEADERS)
    principal, pool = session.principal, _pool(request)
    common = {"csrf": session.csrf_token, "role": principal.role.value}
    if principal.role is Role.owner:
        return _html("owner.html", common | await pages.owner_page(pool, principal))
    if principal.role is Role.merchant:
        return _html("merchant.html", common | await pages.merchant_page(pool, principal))
    search = (q or "").strip()[:FORM_FIELD_LENGTH_MAX] or None
    data = await pages.operator_page(pool, principal, search=search, audit=audit)
    return _html("operator.html", common | data)


@post("/dashboard/sign-out", include_in_schema=False, status_code=303)
async def sign_out(request: Request[Any, Any, Any]) -> Response[Any]:
    await end_session(_pool(request), request.cookies.get(COOKIE))
    return Redirect(
        "/dashboard", status_code=303, headers=SECURITY_HEADERS, cookies=[_cookie(request, "", 0)]
    )


@post("/dashboard/topup", include_in_schema=False, status_code=200)
async def top_up(request: Request[Any, Any, Any]) -> Response[Any]:
    form = await _form(request)
    session = _checked(await _session(request), form)
    if session.principal.role is not Role.owner or session.principal.subject_id is None:
        raise Unauthenticated("top-ups are made by the account owner")
    settings: Settings = request.app.state.settings
    try:
        micros = round(float(form.get("amount_usd", "")) * 100) * 10_000
        created = await create_card_topup(
            settings, session.principal.subject_id, CardTopupCreate(amount_micros=micros)
        )
    except (ValueError, LedgerError) as exc:
        message = exc.detail if isinstance(exc, LedgerError) else "Enter an amount in dollars."
        return _html(
            "topup.html",
            {"url": None, "error": message, "role": "owner", "csrf": session.csrf_token},
        )
    return _html(
        "topup.html",
        {"url": created.url, "error": None, "role": "owner", "csrf": session.csrf_token},
    )


@get("/dashboard/static/dashboard.css", include_in_schema=False)
async def stylesheet() -> Response[bytes]:
    return Response(
        _STYLESHEET,
        media_type="text/css",
        headers={"Cache-Control": "max-age=3600", "X-Content-Type-Options": "nosniff"},
    )


routes: list[Any] = [sign_in_page, sign_in, home, sign_out, top_up, stylesheet]
# The pages are not in the API document, which the request guard reads to refuse
# unknown query parameters: these are the ones they take.
query_parameters: dict[tuple[str, str], frozenset[str]] = {
    ("GET", "/dashboard/home"): frozenset({"q", "audit"}),
}
