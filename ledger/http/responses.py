"""Responses every controller shares: a creation is 201 with `Location`."""

from __future__ import annotations

from typing import TypeVar

from litestar import Response

__all__ = ["created"]

T = TypeVar("T")


def created(content: T, location: str, *, new: bool = True) -> Response[T]:
    """201 with `Location` naming the created resource; 200 (same body, same
    `Location`) for a replay that created nothing (`new=False`)."""
    return Response(content, status_code=201 if new else 200, headers={"Location": location})
