"""Fault injection for tests and benchmarks: scripted faults for exact tests, rates for realistic runs."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

FAULT_KINDS = ("error", "reset", "http", "truncated", "latency")


@dataclass
class Fault:
    """One injected outcome.

    kind: error (the cloud's JSON error with ``code``), reset (the connection is closed without an answer),
    http (a raw ``status`` with a non-JSON ``body``, as a broken proxy sends), truncated (a 200 whose JSON
    is cut short), latency (``latency_ms`` added, then the request is served normally).
    """

    kind: str
    code: str | None = None
    status: int = 502
    body: str = "<html><body>502 Bad Gateway</body></html>"
    latency_ms: float = 0.0

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Fault:
        if raw.get("kind") not in FAULT_KINDS:
            raise ValueError(f"fault kind must be one of {', '.join(FAULT_KINDS)}, not {raw.get('kind')!r}")
        if raw["kind"] == "error" and not raw.get("code"):
            raise ValueError("an error fault needs a code")
        return cls(
            kind=raw["kind"],
            code=raw.get("code"),
            status=int(raw.get("status", 502)),
            body=str(raw.get("body", cls.body)),
            latency_ms=float(raw.get("latency_ms", 0)),
        )


@dataclass
class Faults:
    """``script``: faults served first, one per matching request, in order. ``rates``: code (or "reset",
    "http", "truncated") -> probability per request. ``latency_ms``/``jitter_ms``: added to every request.
    ``actions``: which actions all of these apply to (empty: all)."""

    script: list[Fault] = field(default_factory=list)
    rates: dict[str, float] = field(default_factory=dict)
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    actions: list[str] = field(default_factory=list)
    rng: random.Random = field(default_factory=random.Random)

    @classmethod
    def from_json(cls, raw: dict[str, Any], seed: int | None = None) -> Faults:
        unknown = set(raw) - {"script", "rates", "latency_ms", "jitter_ms", "actions", "seed"}
        if unknown:
            raise ValueError(f"unknown fault setting(s): {', '.join(sorted(unknown))}")
        rates = {str(k): float(v) for k, v in raw.get("rates", {}).items()}
        if any(not 0 <= v <= 1 for v in rates.values()):
            raise ValueError("fault rates are probabilities between 0 and 1")
        return cls(
            script=[Fault.from_json(f) for f in raw.get("script", [])],
            rates=rates,
            latency_ms=float(raw.get("latency_ms", 0)),
            jitter_ms=float(raw.get("jitter_ms", 0)),
            actions=list(raw.get("actions", [])),
            rng=random.Random(raw.get("seed", seed)),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "script": [f.__dict__ for f in self.script],
            "rates": self.rates,
            "latency_ms": self.latency_ms,
            "jitter_ms": self.jitter_ms,
            "actions": self.actions,
        }

    def delay_seconds(self, action: str) -> float:
        if self.actions and action not in self.actions:
            return 0.0
        jitter = self.rng.uniform(0, self.jitter_ms) if self.jitter_ms else 0.0
        return (self.latency_ms + jitter) / 1000

    def draw(self, action: str) -> Fault | None:
        """The fault for this request, if any; scripted faults go first."""
        if self.actions and action not in self.actions:
            return None
        if self.script:
            return self.script.pop(0)
        for name, rate in self.rates.items():
            if self.rng.random() < rate:
                if name in ("reset", "truncated"):
                    return Fault(kind=name)
                if name == "http":
                    return Fault(kind="http")
                return Fault(kind="error", code=name)
        return None
