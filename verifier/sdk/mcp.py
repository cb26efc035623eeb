"""Paid MCP tools for servers built with the official `mcp` SDK (`MCPServer`).

    ledger = MerchantClient("https://ledger.example", api_key="lk_mer_…")
    paid = Paywall(ledger)
    server = MCPServer("search")

    @server.tool()
    @paid(price_micros=2_000)                  # fixed price: charged before the body runs
    async def search(query: str) -> str: ...

    @server.tool()
    @paid(max_price_micros=50_000)             # variable price: hold the maximum,
    async def summarize(text: str) -> Metered[str]:   # capture what the tool reports
        return Metered(summary, cost_micros=tokens_used * 3)

`@paid` goes *under* `@server.tool()` (or use `paid.tool(server, …)`, which
cannot be put in the wrong order).

Per call:
- the credit token comes from `Authorization: Bearer v4.public…` (streamable
  HTTP) or, for transports without headers, `params._meta[CREDIT_TOKEN_META_KEY]`;
- an agent may send `params._meta[IDEMPOTENCY_META_KEY]`: a retry of the same
  call (same tool and arguments) with the same value is charged once; the same
  value on a different call is a new charge; a retry of a call that failed and
  was refunded, or whose hold is already settled, is refused with
  `idempotency_conflict` (the body does not run again for free);
- refused calls (no credit token, invalid, out of scope, budget exhausted, …)
  are tool errors (`isError: true`) whose `structuredContent` is the ledger's
  problem object (the same fields as its HTTP answer), and the body never runs;
- a successful call carries the signed receipt in the result's
  `_meta[RECEIPT_META_KEY]` = `{"receipt": {facts}, "signed_receipt": "v4.public…"}`;
- a tool that raises after a hold releases the hold; after a fixed-price charge
  it is refunded in full (unless `refund_on_error=False`), and the refund
  receipt rides on the error's `_meta`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import inspect
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Annotated, Any, Generic, TypeVar, get_args, get_origin

import anyio
import anyio.to_thread
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError, UnexpectedToolError
from mcp.server.mcpserver.utilities.context_injection import find_context_parameter
from mcp.server.mcpserver.utilities.func_metadata import FuncMetadata, func_metadata
from mcp.shared.exceptions import MCPError
from mcp_types import CallToolResult, TextContent

from ledger import limits
from ledger.errors import IdempotencyConflict, ServiceUnavailable
from verifier import errors as server_errors
from verifier.sdk.merchant import (
    CREDIT_TOKEN_META_KEY,
    IDEMPOTENCY_META_KEY,
    PRICE_META_KEY,
    RECEIPT_META_KEY,
    Capture,
    Charge,
    LedgerClientError,
    LedgerProblem,
    MerchantClient,
    Refund,
    Unauthenticated,
)

__all__ = [
    "CREDIT_TOKEN_META_KEY",
    "IDEMPOTENCY_META_KEY",
    "PRICE_META_KEY",
    "RECEIPT_META_KEY",
    "Metered",
    "Paywall",
    "Pricing",
    "credit_token_from",
    "refusal_result",
]

log = logging.getLogger("verifier.sdk.mcp")

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

AGENT_KEY_LENGTH_MAX = 200
# The parameter through which MCPServer hands the wrapper its Context (never in the schema).
_CONTEXT_PARAM = "ledger_mcp_context"


@dataclasses.dataclass(frozen=True)
class Metered(Generic[T]):
    """What a variable-price tool returns: its value and what the call cost."""

    value: T
    cost_micros: int


@dataclasses.dataclass(frozen=True, kw_only=True)
class Pricing:
    price_micros: int | None = None
    max_price_micros: int | None = None
    tool: str | None = None
    refund_on_error: bool = True

    def __post_init__(self) -> None:
        fixed, variable = self.price_micros is not None, self.max_price_micros is not None
        assert fixed != variable, "give exactly one of price_micros and max_price_micros"
        assert (self.price_micros or self.max_price_micros or 0) >= 1, "prices are ≥ 1 micro-USD"

    @property
    def variable(self) -> bool:
        return self.max_price_micros is not None

    def advertised(self) -> dict[str, Any]:
        if self.variable:
            return {"kind": "metered", "max_micros": self.max_price_micros, "unit": "micro_usd"}
        return {"kind": "fixed", "amount_micros": self.price_micros, "unit": "micro_usd"}


# ---- Reading the request --------------------------------------------------------


def _meta(ctx: Context[Any, Any]) -> Mapping[str, Any]:
    meta = ctx.request_context.meta
    return meta if isinstance(meta, Mapping) else {}


def credit_token_from(ctx: Context[Any, Any]) -> str | None:
    """The credit token of this call: the Bearer header, else `_meta`.

    A Bearer value that is not a PASETO v4.public (say, the MCP server's own
    OAuth access token) is not ours; `_meta` is consulted then.
    """
    headers = ctx.headers
    authorization = headers.get("authorization") if headers is not None else None
    if authorization:
        scheme, _, value = authorization.partition(" ")
        value = value.strip()
        if scheme.lower() == "bearer" and value.startswith("v4.public."):
            return value
    from_meta = _meta(ctx).get(CREDIT_TOKEN_META_KEY)
    return from_meta if isinstance(from_meta, str) and from_meta else None


def _refund_key(charge_key: str) -> str:
    """The refund's key, derived from the charge's (so a retried refund is one)."""
    return f"{charge_key}.refund"[-limits.IDEMPOTENCY_KEY_LENGTH_MAX :]


def _idempotency_key(
    ctx: Context[Any, Any], credit_token: str, tool: str, arguments: Mapping[str, Any]
) -> str | None:
    """The ledger key for an agent-chosen one: scoped to the credit token, the tool and
    the call's arguments, so keys chosen by different agents never meet and reusing a
    key for a different call is a new charge (never a free replay of the first one).
    None: every call is a new charge."""
    agent_key = _meta(ctx).get(IDEMPOTENCY_META_KEY)
    if not isinstance(agent_key, str) or not 1 <= len(agent_key) <= AGENT_KEY_LENGTH_MAX:
        return None
    call = json.dumps(arguments, sort_keys=True, separators=(",", ":"), default=repr)
    digest = hashlib.sha256(f"{credit_token}\0{tool}\0{agent_key}\0{call}".encode()).hexdigest()
    return f"mcp:{digest[:48]}"


def _key_spent(detail: str) -> CallToolResult:
    return refusal_result(IdempotencyConflict(detail).problem())


def _tool_name(ctx: Context[Any, Any], pricing: Pricing) -> str:
    if pricing.tool is not None:
        return pricing.tool
    params = ctx.request_context.params or {}
    name = params.get("name")
    assert isinstance(name, str) and name, "a tools/call always names its tool"
    return name


# ---- Results ------------------------------------------------------------------------


def refusal_result(problem: Mapping[str, Any]) -> CallToolResult:
    """A tool error an agent can act on: `structuredContent` is the problem object."""
    text = f"{problem.get('title', 'Refused')}: {problem.get('detail', '')}".rstrip(": ")
    if not text.endswith((".", "!", "?")):
        text += "."
    topup = problem.get("topup")
    if problem.get("code") == "budget_exhausted" and isinstance(topup, Mapping):
        text += f" Top up at {topup.get('url')} ({', '.join(topup.get('methods', []))}), or ask for a new credit token."
    return CallToolResult(
        content=[TextContent(type="text", text=text)],
        structured_content=dict(problem),
        is_error=True,
    )


def _missing_token() -> CallToolResult:
    error = server_errors.TokenInvalid(
        "this tool is paid: send a credit token as `Authorization: Bearer <credit token>` "
        f"or in `_meta[{CREDIT_TOKEN_META_KEY!r}]`",
        reason="missing",
    )
    return refusal_result(error.problem())


def _unavailable(exc: LedgerClientError) -> CallToolResult:
    if isinstance(exc, Unauthenticated):
        # The merchant's API key is wrong: nothing the agent can act on, so not its problem.
        log.error("the ledger refused this server's merchant API key: %s", exc.code)
    elif isinstance(exc, LedgerProblem):
        return refusal_result(exc.problem)
    return refusal_result(
        ServiceUnavailable("the ledger cannot be reached; retry shortly").problem()
    )


def _receipt_meta(done: Charge | Capture | Refund) -> dict[str, Any]:
    return {RECEIPT_META_KEY: {"receipt": done.receipt, "signed_receipt": done.signed_receipt}}


def _failure(exc: BaseException, tool: str, meta: dict[str, Any] | None) -> CallToolResult:
    """A failed tool, reported as MCPServer would: anticipated errors keep their text."""
    if isinstance(exc, ToolError) and not isinstance(exc, UnexpectedToolError):
        log.info("paid tool %r failed: %r", tool, str(exc))
        text = f"Error executing tool {tool}: {exc}"
    else:
        log.error("paid tool %r raised an unexpected exception", tool, exc_info=exc)
        text = f"Error executing tool {tool}"
    return CallToolResult(content=[TextContent(type="text", text=text)], is_error=True, _meta=meta)


# ---- The wrapper --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Tool:
    fn: Callable[..., Any]
    is_async: bool
    wants_context: str | None
    convert: FuncMetadata

    async def run(self, kwargs: dict[str, Any]) -> Any:
        if self.is_async:
            return await self.fn(**kwargs)
        return await anyio.to_thread.run_sync(lambda: self.fn(**kwargs))

    def result(self, value: Any) -> CallToolResult:
        converted = self.convert.convert_result(value)
        if not isinstance(converted, CallToolResult):
            raise ToolError("a paid tool cannot ask the client for more input")
        return converted


class Paywall:
    """Turns MCPServer tools into paid tools charged through one `MerchantClient`."""

    def __init__(
        self,
        ledger: MerchantClient,
        *,
        refund_on_error: bool = True,
        hold_expires_in_s: int = limits.HOLD_EXPIRY_DEFAULT_S,
    ) -> None:
        self.ledger = ledger
        self.refund_on_error = refund_on_error
        self.hold_expires_in_s = hold_expires_in_s

    def __call__(
        self,
        *,
        price_micros: int | None = None,
        max_price_micros: int | None = None,
        tool: str | None = None,
        refund_on_error: bool | None = None,
    ) -> Callable[[Callable[..., Any]], Callable[..., Awaitable[CallToolResult]]]:
        pricing = Pricing(
            price_micros=price_micros,
            max_price_micros=max_price_micros,
            tool=tool,
            refund_on_error=self.refund_on_error if refund_on_error is None else refund_on_error,
        )
        return lambda fn: self._wrap(fn, pricing)

    @contextlib.asynccontextmanager
    async def lifespan(self, server: MCPServer[Any]) -> AsyncIterator[dict[str, Any]]:
        """`MCPServer(..., lifespan=paywall.lifespan)`: closes the ledger client at shutdown."""
        try:
            yield {}
        finally:
            await self.ledger.aclose()

    def tool(
        self,
        server: MCPServer[Any],
        *,
        price_micros: int | None = None,
        max_price_micros: int | None = None,
        name: str | None = None,
        refund_on_error: bool | None = None,
        **tool_options: Any,
    ) -> Callable[[F], F]:
        """Register a paid tool on `server`; the price is advertised in the tool's `_meta`."""
        decorate = self(
            price_micros=price_micros,
            max_price_micros=max_price_micros,
            tool=name,
            refund_on_error=refund_on_error,
        )

        def register(fn: F) -> F:
            wrapped = decorate(fn)
            pricing: Pricing = wrapped.__paid__  # type: ignore[attr-defined]
            meta = dict(tool_options.pop("meta", None) or {})
            meta[PRICE_META_KEY] = pricing.advertised()
            server.add_tool(wrapped, name=name, meta=meta, **tool_options)
            return fn

        return register

    def _wrap(
        self, fn: Callable[..., Any], pricing: Pricing
    ) -> Callable[..., Awaitable[CallToolResult]]:
        tool, signature, context_param = _introspect(fn, pricing)

        async def paid_tool(**kwargs: Any) -> CallToolResult:
            ctx = kwargs[context_param]
            if tool.wants_context is None:
                del kwargs[context_param]
            if pricing.variable:
                return await self._metered(tool, pricing, ctx, kwargs)
            return await self._fixed(tool, pricing, ctx, kwargs)

        paid_tool.__name__ = fn.__name__
        paid_tool.__qualname__ = fn.__qualname__
        paid_tool.__doc__ = fn.__doc__
        paid_tool.__module__ = fn.__module__
        paid_tool.__signature__ = signature  # type: ignore[attr-defined]
        paid_tool.__annotations__ = {
            p.name: p.annotation
            for p in signature.parameters.values()
            if p.annotation is not inspect.Parameter.empty
        } | {"return": signature.return_annotation}
        paid_tool.__paid__ = pricing  # type: ignore[attr-defined]
        return paid_tool

    async def _fixed(
        self, tool: _Tool, pricing: Pricing, ctx: Context[Any, Any], kwargs: dict[str, Any]
    ) -> CallToolResult:
        assert pricing.price_micros is not None
        name = _tool_name(ctx, pricing)
        credit_token = credit_token_from(ctx)
        if credit_token is None:
            return _missing_token()
        try:
            charge = await self.ledger.charge(
                credit_token,
                pricing.price_micros,
                tool=name,
                idempotency_key=_idempotency_key(ctx, credit_token, name, kwargs),
            )
            # A replay whose call failed and was refunded: running the body again
            # would give the result away. The agent retries with a new key.
            if (
                charge.replayed
                and (await self.ledger.get_charge(charge.charge_id))["refunded_micros"]
            ):
                return _key_spent(
                    "this idempotency key belongs to a call that failed and was refunded; "
                    "retry with a new key"
                )
        except LedgerClientError as exc:
            return _unavailable(exc)
        try:
            result = tool.result(await tool.run(kwargs))
        except (MCPError, anyio.get_cancelled_exc_class()):
            # A protocol error, or the call was cancelled: the agent gets nothing.
            with anyio.CancelScope(shield=True):
                await self._refund(charge, pricing, name)
            raise
        except Exception as exc:
            refund = await self._refund(charge, pricing, name)
            return _failure(exc, name, _receipt_meta(refund) if refund else None)
        result.meta = {**(result.meta or {}), **_receipt_meta(charge)}
        return result

    async def _refund(self, charge: Charge, pricing: Pricing, tool: str) -> Refund | None:
        if not pricing.refund_on_error:
            return None
        assert pricing.price_micros is not None
        try:
            return await self.ledger.refund(
                charge.charge_id,
                pricing.price_micros,
                idempotency_key=_refund_key(charge.idempotency_key),
                reason=f"tool {tool} failed",
            )
        except LedgerClientError as exc:
            # Deterministic key: an operator (or a later retry) can finish it safely.
            log.error("refund of charge %s failed: %s", charge.charge_id, exc)
            return None

    async def _metered(
        self, tool: _Tool, pricing: Pricing, ctx: Context[Any, Any], kwargs: dict[str, Any]
    ) -> CallToolResult:
        assert pricing.max_price_micros is not None
        name = _tool_name(ctx, pricing)
        credit_token = credit_token_from(ctx)
        if credit_token is None:
            return _missing_token()
        try:
            hold = await self.ledger.authorize(
                credit_token,
                pricing.max_price_micros,
                tool=name,
                idempotency_key=_idempotency_key(ctx, credit_token, name, kwargs),
                expires_in_s=self.hold_expires_in_s,
            )
        except LedgerClientError as exc:
            return _unavailable(exc)
        if hold.status != "pending":
            # A replay of a call already settled (captured, voided or expired): running
            # the body again could not be paid for. The agent retries with a new key.
            return _key_spent(
                f"this idempotency key belongs to a call already settled ({hold.status}); "
                "retry with a new key"
            )
        try:
            metered = await tool.run(kwargs)
            if not isinstance(metered, Metered):
                raise TypeError(
                    f"a metered tool returns Metered(...), not {type(metered).__name__}"
                )
            result = tool.result(metered.value)
        except (MCPError, anyio.get_cancelled_exc_class()):
            with anyio.CancelScope(shield=True):
                await self._void(hold.hold_id)
            raise
        except Exception as exc:
            await self._void(hold.hold_id)
            return _failure(exc, name, None)
        cost = min(max(int(metered.cost_micros), 0), pricing.max_price_micros)
        if cost != metered.cost_micros:
            log.warning("tool %r reported cost %d; charged %d", name, metered.cost_micros, cost)
        if cost == 0:
            await self._void(hold.hold_id)
            return result
        try:
            capture = await self.ledger.capture(hold.hold_id, cost)
        except LedgerClientError as exc:
            # The agent has its result; the hold releases itself at expiry.
            log.error("capture of hold %s failed: %s", hold.hold_id, exc)
            return result
        result.meta = {**(result.meta or {}), **_receipt_meta(capture)}
        return result

    async def _void(self, hold_id: str) -> None:
        try:
            await self.ledger.void(hold_id)
        except LedgerClientError as exc:
            log.error("void of hold %s failed (it expires by itself): %s", hold_id, exc)


def _introspect(fn: Callable[..., Any], pricing: Pricing) -> tuple[_Tool, inspect.Signature, str]:
    """The wrapper's signature: the tool's parameters plus a Context, returning a
    CallToolResult whose structured output keeps the tool's own schema."""
    signature = inspect.signature(fn, eval_str=True)
    for p in signature.parameters.values():
        assert p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY), "tools take named parameters"
    wants_context = find_context_parameter(fn)
    returns = signature.return_annotation
    if pricing.variable:
        returns = _metered_value_type(returns)
    # How MCPServer would have turned the tool's value into a result.
    shim = _signature_shim(fn, signature.replace(return_annotation=returns))
    convert = func_metadata(shim, skip_names=[wants_context] if wants_context else [])
    parameters = list(signature.parameters.values())
    context_param = wants_context or _CONTEXT_PARAM
    if wants_context is None:
        parameters.append(
            inspect.Parameter(_CONTEXT_PARAM, inspect.Parameter.KEYWORD_ONLY, annotation=Context)
        )
    plain = returns is inspect.Signature.empty or (
        isinstance(returns, type) and issubclass(returns, CallToolResult)
    )
    wrapper_returns: Any = CallToolResult if plain else Annotated[CallToolResult, returns]
    tool = _Tool(
        fn=fn,
        is_async=inspect.iscoroutinefunction(fn),
        wants_context=wants_context,
        convert=convert,
    )
    return (
        tool,
        signature.replace(parameters=parameters, return_annotation=wrapper_returns),
        context_param,
    )


def _metered_value_type(returns: Any) -> Any:
    if get_origin(returns) is Metered:
        return get_args(returns)[0]
    if returns is Metered or returns is inspect.Signature.empty:
        return inspect.Signature.empty
    raise TypeError("a variable-price tool is annotated `-> Metered[T]`")


def _signature_shim(fn: Callable[..., Any], signature: inspect.Signature) -> Callable[..., Any]:
    def shim(**kwargs: Any) -> Any:
        raise AssertionError("never called")

    shim.__name__ = fn.__name__
    shim.__signature__ = signature  # type: ignore[attr-defined]
    return shim
