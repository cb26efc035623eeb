"""HTTP controllers of verify-and-debit: merchants, charges, holds, refunds."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from litestar import Controller, Request, Response, get, post
from litestar.params import FromPath, JSONBody, QueryParameter

from ledger import limits
from ledger.access.api_keys import Principal, Role, require_role
from ledger.http.apidoc import problem_responses, replay_response
from ledger.http.params import Auth, Pool, strict_body
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


def _status(created: bool) -> int:
    return 201 if created else 200


class MerchantController(Controller):
    path = "/v1/merchants"
    tags = ["merchants"]
    security = [{"apiKey": []}]

    @post(operation_id="createMerchant", summary="Register a paid tool provider (operator)")
    async def create_merchant(
        self,
        request: Request[Any, Any, Any],
        data: JSONBody[MerchantCreate],
        principal: Auth,
        pool: Pool,
    ) -> MerchantCreated:
        require_role(principal, Role.operator)
        data = await strict_body(request, MerchantCreate)
        async with pool.acquire() as conn:
            return await register_merchant(conn, data.name)

    @get("/me", operation_id="getOwnMerchant", summary="The calling merchant and its revenue")
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
        opt={"money": "charge"},
        responses={**problem_responses(402, 409, 429), **replay_response(charges.ChargeOut)},
        summary="Verify a credit token and debit it (merchant)",
        status_code=201,
    )
    async def create_charge(
        self, request: Request[Any, Any, Any], data: JSONBody[charges.ChargeIn], principal: Auth
    ) -> Response[charges.ChargeOut]:
        data = await strict_body(request, charges.ChargeIn)
        result, created = await charges.charge(
            _ctx(request), await _merchant(request, principal), data
        )
        return Response(result, status_code=_status(created))

    @get(operation_id="listCharges", summary="The calling merchant's charges, newest first")
    async def list_charges(
        self,
        request: Request[Any, Any, Any],
        principal: Auth,
        limit: Annotated[
            int, QueryParameter(ge=1, le=limits.PAGE_SIZE_MAX, description="Charges per page")
        ] = limits.PAGE_SIZE_DEFAULT,
        before: Annotated[
            uuid.UUID | None,
            QueryParameter(required=False, description="Cursor: `next_before` of the last page"),
        ] = None,
    ) -> views.ChargePage:
        merchant = await _merchant(request, principal)
        return await views.list_charges(_ctx(request).pool, merchant, before=before, limit=limit)

    @get("/{charge_id:uuid}", operation_id="getCharge", summary="One of the merchant's charges")
    async def get_charge(
        self, request: Request[Any, Any, Any], charge_id: FromPath[uuid.UUID], principal: Auth
    ) -> views.ChargeView:
        merchant = await _merchant(request, principal)
        return await views.read_charge(_ctx(request).pool, merchant, charge_id)

    @post(
        "/{charge_id:uuid}/refunds",
        operation_id="createRefund",
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
    ) -> Response[charges.RefundOut]:
        merchant = await _merchant(request, principal)
        data = await strict_body(request, charges.RefundIn)
        result, created = await charges.refund(_ctx(request), merchant, charge_id, data)
        return Response(result, status_code=_status(created))


class HoldController(Controller):
    path = "/v1/holds"
    tags = ["holds"]
    security = [{"apiKey": []}]

    @post(
        operation_id="createHold",
        opt={"money": "hold"},
        responses={**problem_responses(402, 409, 429), **replay_response(charges.HoldOut)},
        summary="Authorize up to a maximum (merchant)",
        status_code=201,
    )
    async def create_hold(
        self, request: Request[Any, Any, Any], data: JSONBody[charges.HoldIn], principal: Auth
    ) -> Response[charges.HoldOut]:
        data = await strict_body(request, charges.HoldIn)
        result, created = await charges.place_hold(
            _ctx(request), await _merchant(request, principal), data
        )
        return Response(result, status_code=_status(created))

    @get("/{hold_id:uuid}", operation_id="getHold", summary="One of the merchant's holds")
    async def get_hold(
        self, request: Request[Any, Any, Any], hold_id: FromPath[uuid.UUID], principal: Auth
    ) -> views.HoldView:
        merchant = await _merchant(request, principal)
        return await views.read_hold(_ctx(request).pool, merchant, hold_id)

    @post(
        "/{hold_id:uuid}/capture",
        operation_id="captureHold",
        opt={"money": "capture"},
        responses=problem_responses(409, 429),
        summary="Capture up to the held amount",
        status_code=200,
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
        opt={"money": "void"},
        responses=problem_responses(409),
        summary="Release a hold",
        status_code=200,
    )
    async def void_hold(
        self, request: Request[Any, Any, Any], hold_id: FromPath[uuid.UUID], principal: Auth
    ) -> charges.VoidOut:
        return await charges.void_hold(_ctx(request), await _merchant(request, principal), hold_id)


routes: list[Any] = [MerchantController, ChargeController, HoldController]
