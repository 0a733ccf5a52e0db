"""The worker fixes glibc's malloc thresholds, unless the operator chose otherwise."""

from __future__ import annotations

import sys

import pytest

from pipeline.malloc_tuning import keep_freed_memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_sets_the_thresholds_on_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    assert keep_freed_memory() is True


@pytest.mark.parametrize("var", ["LD_PRELOAD", "GLIBC_TUNABLES"])
def test_an_operators_allocator_choice_wins(monkeypatch: pytest.MonkeyPatch, var: str) -> None:
    monkeypatch.setenv(var, "libjemalloc.so.2" if var == "LD_PRELOAD" else "glibc.malloc.x=1")
    assert keep_freed_memory() is False
