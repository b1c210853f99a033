"""bench/naive.py's choice per watch event of a pod (change_for): a Ready pod's server is added only with
``--register``; a terminating pod's is removed at once only with ``--remove-on terminating`` (the naive baseline), a
deleted pod's only with ``--remove-on deleted`` (a registrar after the fact), never with ``never``; nothing else
changes the group."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

NAIVE = Path(__file__).resolve().parents[2] / "bench" / "naive.py"


def load_naive() -> ModuleType:
    # bench/ is scripts, not a package: load the file itself, under a name of its own.
    spec = importlib.util.spec_from_file_location("bench_naive", NAIVE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


naive = load_naive()


def pod(ready: bool = True, terminating: bool = False) -> Any:
    return SimpleNamespace(
        metadata=SimpleNamespace(deletion_timestamp="2025-01-01T00:00:00Z" if terminating else None),
        status=SimpleNamespace(conditions=[SimpleNamespace(type="Ready", status="True" if ready else "False")]),
    )


@pytest.mark.parametrize("event", ["ADDED", "MODIFIED"])
@pytest.mark.parametrize("remove_on", ["terminating", "deleted", "never"])
def test_a_ready_pod_is_added_only_with_register(event: str, remove_on: str) -> None:
    assert naive.change_for(event, pod(ready=True), True, remove_on) == "add"
    assert naive.change_for(event, pod(ready=True), False, remove_on) is None
    assert naive.change_for(event, pod(ready=False), True, remove_on) is None


def test_a_pod_without_conditions_is_not_ready() -> None:
    bare = SimpleNamespace(metadata=SimpleNamespace(deletion_timestamp=None), status=SimpleNamespace(conditions=None))
    assert naive.change_for("ADDED", bare, True, "never") is None


@pytest.mark.parametrize(
    ("remove_on", "terminating", "deleted"),
    [("terminating", "remove", None), ("deleted", None, "remove"), ("never", None, None)],
)
@pytest.mark.parametrize("register", [True, False])
def test_removal_follows_remove_on(
    remove_on: str, terminating: str | None, deleted: str | None, register: bool
) -> None:
    # A terminating pod that still reports Ready is never added again (its deletion counts first).
    assert naive.change_for("MODIFIED", pod(ready=True, terminating=True), register, remove_on) == terminating
    assert naive.change_for("DELETED", pod(ready=True, terminating=True), register, remove_on) == deleted
