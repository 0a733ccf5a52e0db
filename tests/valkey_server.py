"""Fixtures for the scale-out tests: a real Valkey server (`bench.valkey.Valkey`), started
once per session on 127.0.0.1 with no persistence and emptied before each test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.valkey import Valkey

__all__ = ["Valkey", "valkey", "valkey_server"]


@pytest.fixture(scope="session")
def valkey_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Valkey]:
    server = Valkey(tmp_path_factory.mktemp("valkey"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def valkey(valkey_server: Valkey) -> Valkey:
    """The session's server, emptied (and started again if a test stopped it)."""
    if valkey_server.proc is None or valkey_server.proc.poll() is not None:
        valkey_server.start()
    valkey_server.flush()
    return valkey_server
