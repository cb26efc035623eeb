"""Bar charts as SVG, drawn on the server: no script, no asset from anywhere.

The SVG is built as data (bars with coordinates and labels) for the template to
write out, so every label passes through the template's escaping like any text.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BarChart", "bar_chart"]

WIDTH = 640
HEIGHT = 200
MARGIN_LEFT = 70
MARGIN_BOTTOM = 28
BARS_MAX = 90


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    label: str
    value: int
    title: str


@dataclass(frozen=True)
class BarChart:
    width: int
    height: int
    bars: list[Bar]
    axis_labels: list[tuple[float, str]]  # (y, text)
    x_labels: list[tuple[float, str]]  # (x, text)
    baseline_y: float
    plot_left: int
    empty: bool


def _usd(micros: int) -> str:
    # Cents for dollar amounts; sub-cent spend (typical per call) keeps its digits.
    return f"${micros / 1_000_000:,.2f}" if micros >= 100_000 else f"${micros / 1_000_000:.6f}"


def bar_chart(points: list[tuple[str, int]], *, title: str) -> BarChart:
    """One bar per (label, micro-USD); the latest BARS_MAX points."""
    points = points[-BARS_MAX:]
    top = max((v for _, v in points), default=0) or 1
    plot_w, plot_h = WIDTH - MARGIN_LEFT - 10, HEIGHT - MARGIN_BOTTOM - 10
    step = plot_w / max(len(points), 1)
    bars = []
    for i, (label, value) in enumerate(points):
        h = max(0.0, value / top * plot_h)
        bars.append(
            Bar(
                x=MARGIN_LEFT + i * step + step * 0.1,
                y=10 + plot_h - h,
                width=max(step * 0.8, 1.0),
                height=h,
                label=label,
                value=value,
                title=f"{title} {label}: {_usd(value)}",
            )
        )
    axis = [(10 + plot_h - f * plot_h, _usd(int(top * f))) for f in (0.0, 0.5, 1.0)]
    every = max(1, len(points) // 6)
    x_labels = [(b.x + b.width / 2, b.label) for i, b in enumerate(bars) if i % every == 0]
    return BarChart(
        width=WIDTH,
        height=HEIGHT,
        bars=bars,
        axis_labels=axis,
        x_labels=x_labels,
        baseline_y=10 + plot_h,
        plot_left=MARGIN_LEFT,
        empty=not points,
    )
