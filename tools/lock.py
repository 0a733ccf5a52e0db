"""The dependency lock: exact versions with hashes, and a virtual environment synced to it.

`compile` resolves pyproject.toml with uv for every platform at once (`--universal`: Linux
and macOS in one file, environment markers where they differ), with torch held at TORCH_PIN so
the shared dependencies fit the torch we run. torch itself and what only torch brings (its
CUDA libraries, triton, sympy…) are left out: the CPU build on dev and CI machines and
PyPI's CUDA build in the Docker image bring different sets, and each is installed first, apart.
The runtime set goes to requirements/runtime.lock (the Docker image installs only it), the
test and tool additions to requirements/dev.lock.

`sync` makes an environment hold exactly the lock: it installs the lock files without
resolving (`--no-deps`, every hash checked), removes whatever else is installed except torch,
what torch brings, pip and the project itself, then compares `pip freeze` with the lock for
this platform and fails on any difference.

Stdlib only (plus `packaging`, which the lock brings), so it runs before anything else.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNTIME = ROOT / "requirements" / "runtime.lock"
DEV = ROOT / "requirements" / "dev.lock"
APART = "torch"
"""Installed apart from the lock (TORCH_PIN), with everything only it needs."""
KEEP = {"pip"}
"""The installer itself is the venv's, not the application's."""

_REQ = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)\s*(?:;\s*([^\\]*?))?\s*\\?$")
_VIA = re.compile(r"^\s*# via (.*)$")


def canonical(name: str) -> str:
    """PEP 503 names: `discord.py` and `discord-py` are one package."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass
class Entry:
    """One locked package: its requirement line, hashes and who needs it."""

    name: str
    version: str
    marker: str | None
    lines: list[str]
    via: set[str]


def parse(text: str) -> list[Entry]:
    """Entries of a uv/pip-tools requirements file, one block each. A universal lock may
    hold one package twice, with markers that split (numpy per Python version)."""
    entries: list[Entry] = []
    current: Entry | None = None
    for line in text.splitlines():
        if (m := _REQ.match(line)) is not None:
            current = Entry(canonical(m[1]), m[2], m[3] or None, [line], set())
            entries.append(current)
        elif current is not None and line.startswith(" "):
            current.lines.append(line)
            if (v := _VIA.match(line)) is not None:
                # Constraint files (`-c path`) are how the lock was made, not who needs it.
                parts = [p.strip() for p in v[1].split(",") if p.strip()]
                parts = [p for p in parts if not p.startswith("-")]
                current.lines[-1] = "    # via " + ", ".join(parts)
                current.via |= {canonical(p) for p in parts}
    return entries


def only_for(entries: list[Entry], root: str) -> set[str]:
    """`root` and every package that nothing outside this set needs."""
    dropped = {root}
    changed = True
    while changed:
        changed = False
        for e in entries:
            if e.name not in dropped and e.via and e.via <= dropped:
                dropped.add(e.name)
                changed = True
    return dropped


def render(entries: list[Entry], header: str) -> str:
    ordered = sorted(entries, key=lambda e: (e.name, e.lines[0]))
    body = "\n".join(line for e in ordered for line in e.lines)
    return header + body + "\n"


def compile_locks(torch_pin: str) -> None:
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if uv is None:
        sys.exit("make lock needs uv (a dev dependency): run `make test` once first")
    with tempfile.TemporaryDirectory() as tmp:
        constraint = Path(tmp) / "torch.txt"
        constraint.write_text(torch_pin + "\n")

        def resolve(out: Path, *extra: str) -> list[Entry]:
            # An existing lock seeds the resolution: uv keeps its versions where they still
            # fit, so `make lock` after a pyproject edit changes only what must change.
            seed = Path(tmp) / out.name
            seed.write_text(out.read_text() if out.exists() else "")
            cmd = [uv, "pip", "compile", str(ROOT / "pyproject.toml"), "--universal",
                   "--python-version", "3.11", "--generate-hashes", "--annotation-style", "line",
                   "--no-header", "--quiet", "-c", str(constraint), "-o", str(seed), *extra]
            subprocess.run(cmd, check=True, cwd=ROOT)
            return parse(seed.read_text())

        full = resolve(DEV, "--extra", "dev")
        pins = Path(tmp) / "pins.txt"
        pins.write_text("".join(e.lines[0].rstrip(" \\") + "\n" for e in full))
        runtime = resolve(RUNTIME, "-c", str(pins))
    header = (
        "# Exact versions with hashes, for Linux and macOS (uv pip compile --universal).\n"
        f"# Made by `make lock` (tools/lock.py) with {torch_pin}; torch and what only torch\n"
        "# brings are installed apart (TORCH_PIN) and left out here.\n"
    )
    drop = only_for(runtime, APART)
    RUNTIME.parent.mkdir(exist_ok=True)
    kept = [e for e in runtime if e.name not in drop]
    RUNTIME.write_text(render(kept, header + "\n"))
    drop_dev = only_for(full, APART) | {e.name for e in runtime}
    dev = [e for e in full if e.name not in drop_dev]
    DEV.write_text(render(dev, header + "# The test and tool additions to runtime.lock.\n\n"))
    print(f"locked {len(kept)} runtime and {len(dev)} dev entries")


def _installed() -> dict[str, tuple[str, list[str]]]:
    """Installed distributions: canonical name -> (version, requirements)."""
    from importlib.metadata import distributions

    return {
        canonical(d.metadata["Name"]): (d.version, list(d.requires or []))
        for d in distributions()
    }


def _closure(root: str, installed: dict[str, tuple[str, list[str]]]) -> set[str]:
    """`root` and everything its installed metadata requires here, recursively."""
    from packaging.requirements import Requirement

    seen: set[str] = set()
    todo = [root]
    while todo:
        name = todo.pop()
        if name in seen or name not in installed:
            continue
        seen.add(name)
        for spec in installed[name][1]:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(canonical(req.name))
    return seen


def wanted(locks: list[Path]) -> dict[str, str]:
    """What the lock files ask for on this platform: name -> version."""
    from packaging.markers import Marker

    out: dict[str, str] = {}
    for path in locks:
        for e in parse(path.read_text()):
            if e.marker is None or Marker(e.marker).evaluate():
                out[e.name] = e.version
    return out


def project_name() -> str:
    return canonical(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["name"])


def differences(locks: list[Path]) -> list[str]:
    """How `pip freeze` here differs from the lock, leaving out the project, pip, torch
    and what only torch brings. Empty when the environment is exactly the lock."""
    installed = _installed()
    expected = wanted(locks)
    apart = _closure(APART, installed) - set(expected)
    ignore = apart | KEEP | {project_name()}
    problems = [
        f"{n} {installed[n][0]} is installed but {'locked at ' + v if v else 'not locked'}"
        for n in sorted(installed)
        if n not in ignore and installed[n][0] != (v := expected.get(n, ""))
    ]
    problems += [f"{n}=={v} is locked but not installed" for n, v in sorted(expected.items())
                 if n not in installed]
    return problems


def sync(locks: list[Path]) -> None:
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    reqs = [arg for path in locks for arg in ("-r", str(path))]
    subprocess.run([*pip, "install", "-q", "--no-deps", "--require-hashes", *reqs], check=True)
    installed = _installed()
    expected = wanted(locks)
    keep = set(expected) | _closure(APART, installed) | KEEP | {project_name()}
    extra = sorted(set(installed) - keep)
    if extra:
        print("removing what the lock does not hold:", ", ".join(extra))
        subprocess.run([*pip, "uninstall", "-q", "-y", *extra], check=True)
    problems = differences(locks)
    if problems:
        sys.exit("the environment does not match the lock: " + "; ".join(problems))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compile", help="resolve pyproject.toml into the lock files")
    c.add_argument("--torch", required=True, help="the TORCH_PIN the lock must fit")
    s = sub.add_parser("sync", help="make this environment hold exactly the lock files")
    s.add_argument("locks", nargs="+", type=Path)
    k = sub.add_parser("check", help="print how this environment differs from the lock")
    k.add_argument("locks", nargs="+", type=Path)
    args = parser.parse_args()
    if args.command == "compile":
        compile_locks(args.torch)
    elif args.command == "sync":
        sync(args.locks)
    else:
        problems = differences(args.locks)
        print(json.dumps(problems, indent=1) if problems else "the environment is the lock")
        sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
