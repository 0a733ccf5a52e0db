"""A bench section in a process of its own: its last stdout line is the result, a failure
names the module and the end of its stderr."""

from __future__ import annotations

import pytest

from bench.child import child_json


async def test_the_last_line_of_the_section_is_its_result() -> None:
    assert await child_json("tests.bench.echo_section", "a", "b") == {
        "args": ["a", "b"], "figure": 1.5,
    }  # fmt: skip


async def test_a_failed_section_names_itself_and_its_error() -> None:
    with pytest.raises(RuntimeError, match=r"bench\.no_such_section failed \(exit 1\).*No module"):
        await child_json("bench.no_such_section")
