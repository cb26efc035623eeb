"""HTTP controllers of verify-and-debit: merchants, charges, holds, refunds."""

from __future__ import annotations

import uuid
from typing import Any

from litestar import Controller, Request, Response, get, post
from litestar.params import FromPath, JSONBody

from ledger import limits
from ledger.access.api_keys import Principal, Role, require_role
from ledger.errors import NotFound
from ledger.http.apidoc import problem_responses, replay_response
from ledger.http.idempotency import IdempotencyKeyHeader, idempotent, keyed
from ledger.http.lists import Cursor, Limit, Page
from ledger.http.params import Auth, Pool, strict_body
from ledger.http.responses import created
from verifier.charges import service as charges
from verifier.charges import views
from verifier.charges.context import ChargeContext
from verifier.charges.merchants import (
    Merchant,
    MerchantCreate,
    MerchantCreated,
    MerchantView,
    read_own_merchant,
    register_merchant,
)

__all__ = ["routes"]


def _ctx(request: Request[Any, Any, Any]) -> ChargeContext:
    ctx: ChargeContext = request.app.state.charge_context
    return ctx


async def _merchant(request: Request[Any, Any, Any], principal: Principal) -> Merchant:
    require_role(principal, Role.merchant)
    assert principal.subject_id is not None
    ctx = _ctx(request)
    return await ctx.merchants.get(ctx.pool, principal.subject_id)


class MerchantController(Controller):
    path = "/v1/merchants"
    tags = ["merchants"]
    security = [{"apiKey": []}]

    @post(
        operation_id="createMerchant",
        summary="Register a paid tool provider (operator)",
        description=(
            "Creates a merchant, its revenue account and its merchant API key, which this "
            "response shows once. Send an `Idempotency-Key` so that a retry returns the same "
            "merchant and key."
        ),
        responses=problem_responses(409),
        middleware=[idempotent],
    )
    async def create_merchant(
        self,
        request: Request[Any, Any, Any],
        data: JSONBody[MerchantCreate],
        principal: Auth,
        pool: Pool,
    ) -> Response[MerchantCreated]:
        require_role(principal, Role.operator)
        data = await strict_body(request, MerchantCreate)
        async with pool.acquire() as conn:
            result = await register_merchant(conn, data.name)
        return created(result, f"/v1/merchants/{result.merchant.id}")

    @get(
        "/{merchant_id:uuid}",
        operation_id="getMerchant",
        summary="A merchant and its revenue (operator, or the merchant itself)",
        description="What `GET /v1/merchants/me` shows, by id: for operators, and for the "
        "merchant's own API key.",
        responses=problem_responses(404),
    )
    async def get_merchant(
        self, request: Request[Any, Any, Any], merchant_id: FromPath[uuid.UUID], principal: Auth
    ) -> MerchantView:
        require_role(principal, Role.operator, Role.merchant)
        if principal.role is Role.merchant and principal.subject_id != merchant_id:
            raise NotFound("no such merchant")
        return await read_own_merchant(_ctx(request).pool, merchant_id)

    @get(
        "/me",
        operation_id="getOwnMerchant",
        description=(
            "The calling merchant, its revenue account's balance and the amount still held for it."
        ),
        summary="The calling merchant and its revenue",
    )
    async def get_own_merchant(
        self, request: Request[Any, Any, Any], principal: Auth
    ) -> MerchantView:
        merchant = await _merchant(request, principal)
        return await read_own_merchant(_ctx(request).pool, merchant.id)


class ChargeController(Controller):
    path = "/v1/charges"
    tags = ["charges"]
    security = [{"apiKey": []}]

    @post(
        operation_id="createCharge",
        description=(
            "Verify-and-debit. The credit token is checked offline (signature, time window, "
            "audience = this merchant, tool, `max_per_call`), then in one database round trip its "
            "cap, every ancestor's cap and the account's balance are checked and debited, the "
            "merchant is credited and the journal written; the answer carries a signed receipt. 201"
            " for a new charge; 200 with the original receipt for a retry with the same idempotency"
            " key (`Idempotency-Key` header or the body's `idempotency_key`, one of them required, "
            "equal if both). A limit hit is 402 `budget_exhausted`, saying which limit and what "
            "helps."
        ),
        opt={"money": "charge"},
        responses={**problem_responses(402, 409, 429), **replay_response(charges.ChargeOut)},
        summary="Verify a credit token and debit it (merchant)",
        status_code=201,
    )
    async def create_charge(
        self,
        request: Request[Any, Any, Any],
        data: JSONBody[charges.ChargeIn],
        principal: Auth,
        idempotency_key: IdempotencyKeyHeader = None,
    ) -> Response[charges.ChargeOut]:
        data = keyed(await strict_body(request, charges.ChargeIn), idempotency_key)
        result, new = await charges.charge(_ctx(request), await _merchant(request, principal), data)
        return created(result, f"/v1/charges/{result.charge_id}", new=new)

    @get(
        operation_id="listCharges",
        description=(
            "The calling merchant's charges and captures, newest first, with what was refunded of "
            "each."
        ),
        summary="The calling merchant's charges, newest first",
    )
    async def list_charges(
        self,
        request: Request[Any, Any, Any],
        principal: Auth,
        limit: Limit = limits.PAGE_SIZE_DEFAULT,
        cursor: Cursor = None,
    ) -> Page[views.ChargeView]:
        merchant = await _merchant(request, principal)
        return await views.list_charges(_ctx(request).pool, merchant, cursor=cursor, limit=limit)

    @get(
        "/{charge_id:uuid}",
        operation_id="getCharge",
        description="One of the calling merchant's charges; another merchant's answers 404.",
        summary="One of the merchant's charges",
    )
    async def get_charge(
        self, request: Request[Any, Any, Any], charge_id: FromPath[uuid.UUID], principal: Auth
    ) -> views.ChargeView:
        merchant = await _merchant(request, principal)
        return await views.read_charge(_ctx(request).pool, merchant, charge_id)

    @post(
        "/{charge_id:uuid}/refunds",
        operation_id="createRefund",
        description=(
            "Returns part or all of a charge to the wallet and to the credit token's budget (and "
            "its ancestors'); never more than was charged in total. Idempotent by key like a "
            "charge. `Location` names the refunded charge."
        ),
        opt={"money": "refund"},
        responses={**problem_responses(409, 429), **replay_response(charges.RefundOut)},
        summary="Refund part or all of a charge (merchant)",
        status_code=201,
    )
    async def create_refund(
        self,
        request: Request[Any, Any, Any],
        charge_id: FromPath[uuid.UUID],
        data: JSONBody[charges.RefundIn],
        principal: Auth,
        idempotency_key: IdempotencyKeyHeader = None,
    ) -> Response[charges.RefundOut]:
        merchant = await _merchant(request, principal)
        data = keyed(await strict_body(request, charges.RefundIn), idempotency_key)
        result, new = await charges.refund(_ctx(request), merchant, charge_id, data)
        return created(result, f"/v1/charges/{charge_id}", new=new)


class HoldController(Controller):
    path = "/v1/holds"
    tags = ["holds"]
    security = [{"apiKey": []}]

    @post(
        operation_id="createHold",
        description=(
            "Reserves up to `amount_micros` on the credit token (and its ancestors) and the wallet,"
            " for a call priced afterwards. Capture at most that, or void; a hold neither captured "
            "nor voided within `expires_in_s` (default 300 s) is released by the service itself. "
            "Idempotent by key like a charge."
        ),
        opt={"money": "hold"},
        responses={**problem_responses(402, 409, 429), **replay_response(charges.HoldOut)},
        summary="Authorize up to a maximum (merchant)",
        status_code=201,
    )
    async def create_hold(
        self,
        request: Request[Any, Any, Any],
        data: JSONBody[charges.HoldIn],
        principal: Auth,
        idempotency_key: IdempotencyKeyHeader = None,
    ) -> Response[charges.HoldOut]:
        data = keyed(await strict_body(request, charges.HoldIn), idempotency_key)
        merchant = await _merchant(request, principal)
        result, new = await charges.place_hold(_ctx(request), merchant, data)
        return created(result, f"/v1/holds/{result.hold_id}", new=new)

    @get(
        "/{hold_id:uuid}",
        operation_id="getHold",
        description="One of the calling merchant's holds and what became of it.",
        summary="One of the merchant's holds",
    )
    async def get_hold(
        self, request: Request[Any, Any, Any], hold_id: FromPath[uuid.UUID], principal: Auth
    ) -> views.HoldView:
        merchant = await _merchant(request, principal)
        return await views.read_hold(_ctx(request).pool, merchant, hold_id)

    @post(
        "/{hold_id:uuid}/capture",
        operation_id="captureHold",
        description=(
            "Posts at most the held amount and releases the rest at once. Capturing again with the "
            "same amount answers the same capture; another amount, or a hold that is no longer "
            "pending, is 409 `hold_not_pending`; more than was held is 409 `capture_exceeds_hold` "
            "(the hold stays pending)."
        ),
        opt={"money": "capture"},
        responses=problem_responses(409, 429),
        summary="Capture up to the held amount",
        status_code=200,
        middleware=[idempotent],
    )
    async def capture_hold(
        self,
        request: Request[Any, Any, Any],
        hold_id: FromPath[uuid.UUID],
        data: JSONBody[charges.CaptureIn],
        principal: Auth,
    ) -> charges.CaptureOut:
        data = await strict_body(request, charges.CaptureIn)
        return await charges.capture_hold(
            _ctx(request), await _merchant(request, principal), hold_id, data
        )

    @post(
        "/{hold_id:uuid}/void",
        operation_id="voidHold",
        description=(
            "Releases a pending hold in full. A hold already captured, voided or expired is 409 "
            "`hold_not_pending` with its `hold_status`."
        ),
        opt={"money": "void"},
        responses=problem_responses(409),
        summary="Release a hold",
        status_code=200,
        middleware=[idempotent],
    )
    async def void_hold(
        self, request: Request[Any, Any, Any], hold_id: FromPath[uuid.UUID], principal: Auth
    ) -> charges.VoidOut:
        return await charges.void_hold(_ctx(request), await _merchant(request, principal), hold_id)


routes: list[Any] = [MerchantController, ChargeController, HoldController]
