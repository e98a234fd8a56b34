"""The shape of ``Runtime.get_status()`` for type checkers (a plain dict at run time)."""

from __future__ import annotations

from typing import TypedDict


class Status(TypedDict):
    """What ``Runtime.get_status()`` returns (a plain dict at run time)."""

    cpu_usage: float | None
    memory_allocated_mb: float
    rss_mb: float | None
    inferences: int
    latency_ms_p50: float | None
    latency_ms_p99: float | None
    quantized: bool
    version: int
    threads: int
    max_threads: int
    throttled: bool
    cpu_limit: float | None
    cpu_budget: float | None
    other_cpu_usage: float | None
    load_average: float | None
    isa: str
    plans_cached: int
    max_plans: int
    plan_cache_mb: float
