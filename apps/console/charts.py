"""Small inline-SVG charts for the console (no JavaScript, no CDN)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

WIDTH, HEIGHT = 600, 150
LEFT, RIGHT, TOP, BOTTOM = 44, 8, 10, 22


def line_chart(
    *,
    minutes: Sequence[datetime],
    values: Sequence[float | None],
    y_max: float,
    y_label: str,
    colour: str = "#1f6f5c",
    percent: bool = False,
) -> SafeString:
    """A polyline over ``minutes`` (gaps where a value is None), with a labelled y axis from 0
    to ``y_max`` and the first, middle and last minute on the x axis."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    colour = escape(colour)
    y_max = y_max or 1
    step = plot_w / max(1, len(values) - 1)

    def x(i: int) -> float:
        return LEFT + i * step

    def y(v: float) -> float:
        return TOP + plot_h - (min(v, y_max) / y_max) * plot_h

    segments, current = [], []
    for i, value in enumerate(values):
        if value is None:
            if current:
                segments.append(current)
            current = []
            continue
        current.append(f"{x(i):.1f},{y(value):.1f}")
    if current:
        segments.append(current)

    top_label = f"{y_max:.0%}" if percent else f"{y_max:g}"
    parts = [
        f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" role="img" '
        f'style="max-width:{WIDTH}px;font:10px sans-serif" aria-label="{escape(y_label)}">',
        f'<line x1="{LEFT}" y1="{TOP + plot_h}" x2="{WIDTH - RIGHT}" y2="{TOP + plot_h}" '
        'stroke="#888"/>',
        f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{TOP + plot_h}" stroke="#888"/>',
        f'<text x="{LEFT - 4}" y="{TOP + 8}" text-anchor="end">{escape(top_label)}</text>',
        f'<text x="{LEFT - 4}" y="{TOP + plot_h}" text-anchor="end">0</text>',
    ]
    last = len(minutes) - 1
    for i in sorted({0, len(minutes) // 2, last}):
        if 0 <= i < len(minutes):
            label = escape(minutes[i].strftime("%H:%M"))
            anchor = "start" if i == 0 else "end" if i == last else "middle"
            parts.append(
                f'<text x="{x(i):.1f}" y="{HEIGHT - 6}" text-anchor="{anchor}">{label}</text>'
            )
    for segment in segments:
        if len(segment) == 1:
            cx, cy = segment[0].split(",")
            parts.append(f'<circle cx="{cx}" cy="{cy}" r="2" fill="{colour}"/>')
        else:
            parts.append(
                f'<polyline points="{" ".join(segment)}" fill="none" stroke="{colour}" '
                'stroke-width="2"/>'
            )
    parts.append("</svg>")
    # Safe: every string put in above is escaped, everything else is a number.
    return mark_safe("".join(parts))  # noqa: S308  # nosec B308 B703
