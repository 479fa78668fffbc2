"""Calls of the stand-in's own ops in this process (read by the tests' in-process probe)."""

from collections import Counter

counts: Counter[str] = Counter()


def bump(name: str) -> None:
    counts[name] += 1
