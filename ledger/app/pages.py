"""Pages the service serves to people, all from its own host.

- `/docs` (Redoc) and `/docs/swagger` (Swagger UI): the API documentation, with
  their JavaScript and CSS served from the `openapi-ui-bundles` package (PyPI)
  under `/docs-assets/`, never from a CDN. A Content-Security-Policy of
  `default-src 'self'` makes a browser refuse any other host anyway.
- `/problems` and `/problems/{code}`: what each problem code means; every
  problem's `type` URI names one of these pages.
- `/topups/{account_id}`: how to top up an account, with only the methods this
  service has configured; the `topup.url` of a 402 for `account_balance`.
- `/topups/card/success` and `/topups/card/cancel`: where Stripe Checkout sends the
  payer back (the default `CARD_SUCCESS_URL` / `CARD_CANCEL_URL`).

None of these is in the OpenAPI document: they are pages, not API operations.
"""

from __future__ import annotations

import html
import uuid
from typing import Any

import openapi_ui_bundles
from litestar import Request, Response, Router, get
from litestar.datastructures import CacheControlHeader, ResponseHeader
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import RedocRenderPlugin, SwaggerRenderPlugin
from litestar.openapi.spec import Components
from litestar.params import FromPath
from litestar.static_files import create_static_files_router

from ledger.config import Settings
from ledger.errors import NotFound
from ledger.http.problems import problem_catalogue
from verifier.errors import TopupAdvice

__all__ = ["DOCS_PATH", "docs_config", "page_handlers"]

DOCS_PATH = "/docs"
# Outside /docs: the OpenAPI router's /docs/{path} catch-all would shadow it.
ASSETS = "/docs-assets"
SWAGGER, REDOC = f"{ASSETS}/swagger-ui", f"{ASSETS}/redoc"
ASSET_MAX_AGE_S = 86_400
FAVICON = f"<link rel='icon' type='image/png' href='{SWAGGER}/favicon-32x32.png'>"
# The page's own assets, inline scripts the renderers write, and nothing else.
CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; font-src 'self' data:; worker-src 'self' blob:; "
    "connect-src 'self'; frame-ancestors 'none'"
)
_cache = CacheControlHeader(max_age=ASSET_MAX_AGE_S, public=True)
_csp = [ResponseHeader(name="Content-Security-Policy", value=CSP)]

# Redoc's bundle names one image on its vendor's CDN (the footer logo); the
# package ships that image, so the bundle is served with the URL pointing here.
_REDOC_CDN_LOGO = b"https://cdn.redoc.ly/redoc/logo-mini.svg"
_REDOC_JS = (
    (openapi_ui_bundles.redoc.static_path / "redoc.standalone.js")
    .read_bytes()
    .replace(_REDOC_CDN_LOGO, f"{REDOC}/logo-mini.svg".encode())
)


@get(f"{ASSETS}/redoc.standalone.js", include_in_schema=False, cache_control=_cache)
async def redoc_js() -> Response[bytes]:
    return Response(_REDOC_JS, media_type="text/javascript")


def docs_config(*, title: str, version: str, description: str, components: Components) -> Any:
    """The OpenAPI config: the document, and the two documentation pages."""
    return OpenAPIConfig(
        title=title,
        version=version,
        description=description,
        path=DOCS_PATH,
        components=components,
        openapi_router=Router(
            path=DOCS_PATH, route_handlers=[], include_in_schema=False, response_headers=_csp
        ),
        render_plugins=[
            RedocRenderPlugin(
                path=["/", "/redoc"],
                js_url=f"{ASSETS}/redoc.standalone.js",
                google_fonts=False,
                favicon=FAVICON,
            ),
            SwaggerRenderPlugin(
                path="/swagger",
                js_url=f"{SWAGGER}/swagger-ui-bundle.js",
                css_url=f"{SWAGGER}/swagger-ui.css",
                standalone_preset_js_url=f"{SWAGGER}/swagger-ui-standalone-preset.js",
                favicon=FAVICON,
            ),
        ],
    )


def _page(title: str, body: str) -> Response[str]:
    text = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title>{FAVICON}"
        "<style>body{font-family:system-ui,sans-serif;max-width:46em;margin:2em auto;"
        "padding:0 1em;line-height:1.5}code,pre{background:#f4f4f4;padding:.1em .3em}"
        "pre{padding:.6em;overflow:auto}</style></head>"
        f"<body><h1>{html.escape(title)}</h1>{body}</body></html>"
    )
    return Response(text, media_type="text/html", headers={"Content-Security-Policy": CSP})


@get("/problems", include_in_schema=False)
async def problem_index() -> Response[str]:
    rows = "".join(
        f"<li><a href='/problems/{info.code}'><code>{info.code}</code></a> "
        f"({info.status}) {html.escape(info.title)}</li>"
        for info in problem_catalogue().values()
    )
    return _page("Problem codes", f"<p>Every error this service answers.</p><ul>{rows}</ul>")


@get("/problems/{code:str}", include_in_schema=False)
async def problem_page(code: FromPath[str]) -> Response[str]:
    info = problem_catalogue().get(code)
    if info is None:
        raise NotFound("no such problem code")
    paragraphs = "".join(f"<p>{html.escape(part)}</p>" for part in info.description.split("\n\n"))
    body = (
        f"<p><code>{info.code}</code> · HTTP {info.status} · "
        "<code>application/problem+json</code></p>"
        f"{paragraphs}<p><a href='/problems'>All problem codes</a> · "
        f"<a href='{DOCS_PATH}'>API documentation</a></p>"
    )
    return _page(info.title, body)


def _card_steps(base: str, settings: Settings) -> str:
    lo, hi = settings.card_topup_min_micros, settings.card_topup_max_micros
    return (
        "<h2>By card</h2><p>The account's owner starts a Stripe Checkout session with the "
        "owner API key, then opens the <code>url</code> it answers and pays. The balance is "
        f"credited when Stripe confirms the payment. Amounts from {lo:,} to {hi:,} micro-USD "
        "(whole cents).</p><pre>curl -X POST "
        f"{html.escape(base)}/v1/topups/card -H 'Authorization: Bearer &lt;owner API key&gt;' "
        "-H 'Content-Type: application/json' -d '{\"amount_micros\": 5000000}'</pre>"
    )


def _usdc_steps(settings: Settings) -> str:
    return (
        "<h2>By USDC</h2><p>Send USDC (the token contract "
        f"<code>{html.escape(settings.usdc_contract or '')}</code> on chain id "
        f"{settings.usdc_chain_id}) to the treasury address "
        f"<code>{html.escape(settings.usdc_treasury or '')}</code> from an address linked to "
        f"the account. 1 USDC base unit is 1 micro-USD, credited after "
        f"{settings.usdc_confirmations} confirmations. The owner links an address once: "
        "<code>POST /v1/wallets/challenge</code>, sign the message with the address, then "
        "<code>POST /v1/wallets</code>. Transfers from an unlinked address wait for the "
        "operator.</p>"
    )


@get("/topups/{account_id:uuid}", include_in_schema=False)
async def topup_page(
    request: Request[Any, Any, Any], account_id: FromPath[uuid.UUID]
) -> Response[str]:
    # The same page for any id: it says how, and reveals nothing about the account.
    settings: Settings = request.app.state.settings
    topup: TopupAdvice = request.app.state.topup
    steps = ""
    if "card" in topup.methods:
        steps += _card_steps(settings.base_url, settings)
    if "usdc" in topup.methods:
        steps += _usdc_steps(settings)
    if not steps:
        steps = (
            "<p>This service takes no top-ups itself: ask its operator to credit the account.</p>"
        )
    intro = (
        f"<p>Account <code>{account_id}</code>. A credit token spends from this balance; "
        "once it is topped up, the same credit token works again.</p>"
    )
    return _page("Top up an account", intro + steps)


@get("/topups/card/success", include_in_schema=False)
async def card_success() -> Response[str]:
    return _page(
        "Payment received",
        "<p>Thank you. The account is credited as soon as Stripe confirms the payment, "
        "usually within seconds; its owner sees it in <code>GET /v1/accounts/{id}</code>.</p>",
    )


@get("/topups/card/cancel", include_in_schema=False)
async def card_cancel() -> Response[str]:
    return _page("Payment cancelled", "<p>Nothing was charged and the balance is unchanged.</p>")


def _asset_routers() -> list[Any]:
    return [
        create_static_files_router(
            path=SWAGGER,
            directories=[openapi_ui_bundles.swagger_ui.static_path],
            name="swagger-assets",
            cache_control=_cache,
            include_in_schema=False,
        ),
        create_static_files_router(
            path=REDOC,
            directories=[openapi_ui_bundles.redoc.static_path],
            name="redoc-assets",
            cache_control=_cache,
            include_in_schema=False,
        ),
    ]


def page_handlers() -> list[Any]:
    return [
        redoc_js,
        *_asset_routers(),
        problem_index,
        problem_page,
        topup_page,
        card_success,
        card_cancel,
    ]
