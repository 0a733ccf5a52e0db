"""The lock (requirements/*.lock, tools/lock.py): what `make test` installed is exactly it,
and it still covers pyproject.toml's ranges (else `make lock` was forgotten)."""

from __future__ import annotations

import tomllib

import pytest
from packaging.requirements import Requirement

from tools import lock

LOCKS = [lock.RUNTIME, lock.DEV]


def _pyproject() -> dict:
    return tomllib.loads((lock.ROOT / "pyproject.toml").read_text())


def test_this_environment_is_exactly_the_lock() -> None:
    assert lock.differences(LOCKS) == []


@pytest.mark.parametrize(("path", "extra"), [(lock.RUNTIME, None), (lock.DEV, "dev")])
def test_every_declared_dependency_is_locked_within_its_range(path, extra) -> None:
    project = _pyproject()["project"]
    declared = project["dependencies"] if extra is None else project["optional-dependencies"][extra]
    locked: dict[str, list[str]] = {}
    for path_ in (lock.RUNTIME, path):
        for e in lock.parse(path_.read_text()):
            locked.setdefault(e.name, []).append(e.version)
    problems = []
    for spec in map(Requirement, declared):
        name = lock.canonical(spec.name)
        if name == lock.APART:
            assert name not in locked, "torch is installed apart (TORCH_PIN), never locked"
            continue
        versions = locked.get(name, [])
        if not versions or not all(spec.specifier.contains(v, prereleases=True) for v in versions):
            problems.append(f"{spec} (locked: {versions or 'no'})")
    assert problems == [], "pyproject.toml changed without `make lock`: " + ", ".join(problems)


def test_the_runtime_lock_leaves_out_dev_tools_and_what_only_torch_brings() -> None:
    runtime = {e.name for e in lock.parse(lock.RUNTIME.read_text())}
    dev = {e.name for e in lock.parse(lock.DEV.read_text())}
    assert {"pytest", "ruff", "uv"} <= dev and not {"pytest", "ruff", "uv"} & runtime
    assert not runtime & dev
    assert not {n for n in runtime | dev if n in {"torch", "triton", "sympy"} or "nvidia" in n}


def test_every_locked_package_carries_hashes() -> None:
    for path in LOCKS:
        for e in lock.parse(path.read_text()):
            assert any("--hash=sha256:" in line for line in e.lines), (path.name, e.name)


def test_only_for_drops_what_nothing_else_needs() -> None:
    text = (
        "a==1 \\\n    --hash=sha256:0\n    # via img2img-bot (pyproject.toml)\n"
        "torch==2 \\\n    --hash=sha256:0\n    # via a, -c /tmp/torch.txt\n"
        "sympy==1 \\\n    --hash=sha256:0\n    # via torch\n"
        "mpmath==1 \\\n    --hash=sha256:0\n    # via sympy\n"
        "filelock==3 \\\n    --hash=sha256:0\n    # via a, torch\n"
        "numpy==2.4 ; python_full_version < '3.12' \\\n    --hash=sha256:0\n    # via a\n"
        "numpy==2.5 ; python_full_version >= '3.12' \\\n    --hash=sha256:0\n    # via a\n"
    )
    entries = lock.parse(text)
    assert [e.name for e in entries].count("numpy") == 2
    assert entries[1].lines[-1] == "    # via a"
    assert lock.only_for(entries, "torch") == {"torch", "sympy", "mpmath"}
