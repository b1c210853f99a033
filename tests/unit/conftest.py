"""Fixtures of the unit tests of the reconciler's decisions: a cluster view over lists, a Kubernetes writer that
records, and the real reconciler over them (tests/unit/fakes.py)."""

from __future__ import annotations

import pytest

from tests.unit.fakes import RecordingKube, RecordingReconciler, View


@pytest.fixture
def view() -> View:
    return View()


@pytest.fixture
def kube() -> RecordingKube:
    return RecordingKube()


@pytest.fixture
def rec(view: View, kube: RecordingKube) -> RecordingReconciler:
    return RecordingReconciler(view, kube)
