"""The top costs of a py-spy flame graph (SVG), as text: what docs/perf/README.md quotes.

    python bench/flame_top.py docs/perf/checkout-spread-before.svg [--top 12]

Prints, as a percentage of all samples: the functions with the most samples on the stack
(inclusive, gunicorn's own frames left out; a function counted once per stack however
often it recurses), the functions with the
most samples at the top of the stack (self), and the self samples by package (django,
rest_framework, psycopg, redis, kombu ...; "socket/ssl/select" and the like are the waits).
"""

from __future__ import annotations

import argparse
import itertools
import re
from collections import Counter
from pathlib import Path

FRAME = re.compile(
    r'<title>(?P<name>.*?) \(\d[\d,]* samples?, [\d.]+%\)</title><rect [^>]*?y="(?P<y>\d+)"'
    r'[^>]*?fg:x="(?P<x>\d+)" fg:w="(?P<w>\d+)"'
)
PACKAGE = re.compile(r"\((?P<path>[^()]+?)(?::\d+)?\)$")
FRAMEWORK = {"all", "<frozen runpy>", "gunicorn"}  # on every stack: left out of "inclusive"


def frames(svg: str) -> list[dict]:
    found = []
    for match in FRAME.finditer(svg):
        name = match.group("name").replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
        found.append({"name": name, "y": int(match.group("y")), "x": int(match.group("x")),
                      "w": int(match.group("w"))})  # fmt: skip
    return found


def function(name: str) -> str:
    """``Class.method (package/module.py:123)`` without the line number."""
    return re.sub(r":\d+\)$", ")", name)


def package(name: str) -> str:
    match = PACKAGE.search(name)
    if not match:
        return name
    return match.group("path").split("/")[0].removesuffix(".py")


def analyse(svg: str) -> tuple[int, Counter[str], Counter[str], Counter[str]]:
    found = frames(svg)
    depth_step = min((b["y"] - a["y"] for a, b in itertools.pairwise(found)
                      if b["y"] > a["y"]), default=16)  # fmt: skip
    by_depth: dict[int, list[dict]] = {}
    for frame in found:
        by_depth.setdefault(frame["y"], []).append(frame)
    roots = by_depth.get(min(by_depth), []) if by_depth else []
    total = sum(frame["w"] for frame in roots)
    inclusive: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    by_package: Counter[str] = Counter()

    def walk(frame: dict, seen: frozenset[str]) -> None:
        children = [
            child for child in by_depth.get(frame["y"] + depth_step, [])
            if frame["x"] <= child["x"] < frame["x"] + frame["w"]
        ]  # fmt: skip
        name = function(frame["name"])
        if name not in seen and package(frame["name"]) not in FRAMEWORK:
            inclusive[name] += frame["w"]
        own = frame["w"] - sum(child["w"] for child in children)
        self_time[name] += own
        by_package[package(frame["name"])] += own
        for child in children:
            walk(child, seen | {name})

    for root in roots:
        walk(root, frozenset())
    return total, inclusive, self_time, by_package


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("svg", type=Path)
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    total, inclusive, self_time, by_package = analyse(args.svg.read_text())
    print(f"{args.svg}: {total} samples")
    for title, counts in [("inclusive", inclusive), ("self", self_time),
                          ("self by package", by_package)]:  # fmt: skip
        print(f"\n{title}:")
        for name, samples in counts.most_common(args.top):
            print(f"  {100 * samples / total:5.1f}%  {name}")


if __name__ == "__main__":
    main()
