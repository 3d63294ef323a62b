"""The layers of ARCHITECTURE.md, checked on the source: imports go downward only, policy does
no I/O, and a module's private (``_named``) parts stay inside its package.

Every import is read with ``ast`` (deferred and ``TYPE_CHECKING`` imports too), so a layer
violation cannot hide inside a function.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import paceline

SRC = Path(paceline.__file__).resolve().parent

# Lowest first. A module may import its own group and any group of a lower layer, never one of
# its own layer or above. The groups are paceline's top-level modules and packages.
LAYERS: tuple[tuple[str, ...], ...] = (
    # Leaves: no import of paceline at all.
    ("errors", "redact", "figures", "_clock"),
    # Sans-I/O: the decisions (policy) and the reading of server headers (signals).
    ("policy", "_signals"),
    # The outcome types the stores keep and the faces return.
    ("_results",),
    # Limit stores beneath the limiter: the shared one on Redis (network I/O, no waiting).
    ("_ratestore",),
    # The waiting for a limit (threads and event loops) and the journal.
    ("_limiter", "stores"),
    # The waiting for everything else: workers, dispatchers, settling.
    ("runners",),
    # The public ways in.
    ("faces",),
    # Faces built on the faces, and the test helpers the command line's demo uses.
    ("http", "testing"),
    # The command line.
    ("cli",),
    # The package's front door and ``python -m paceline``.
    ("__init__", "__main__"),
)
# A public module that is the face of a private package counts as part of it (httpx's pattern).
SAME_GROUP = {"signals": "_signals"}
RANK = {group: rank for rank, groups in enumerate(LAYERS) for group in groups}

# Imports that break the rule above, each with its reason. Empty: keep it so.
ALLOWED_UPWARD: dict[tuple[str, str], str] = {}

# Policy is sans-I/O (ARCHITECTURE.md, "Policy is sans-I/O"): it takes the time as an integer
# and returns decisions; it never reads a clock, sleeps, or touches threads, loops or sockets.
POLICY_FORBIDDEN = {
    "time",
    "datetime",
    "threading",
    "asyncio",
    "concurrent",
    "multiprocessing",
    "subprocess",
    "signal",
    "socket",
    "select",
    "selectors",
    "ssl",
    "os",
    "io",
    "sqlite3",
    "http",
    "urllib",
    "httpx",
    "paceline._clock",
    "paceline._limiter",
}


@dataclass(frozen=True)
class Import:
    importer: str  # dotted module name
    target: str  # dotted module (or module.name) imported
    line: int


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(dotted: str) -> bool:
    path = SRC.parent.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _imports() -> list[Import]:
    found = []
    for path in sorted(SRC.rglob("*.py")):
        me = _module_name(path)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found += [Import(me, alias.name, node.lineno) for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module is not None:
                if node.level:  # relative: resolve against the importer's package
                    base = me.split(".")[: -node.level if path.name != "__init__.py" else None]
                    module = ".".join([*base, node.module])
                else:
                    module = node.module
                found.append(Import(me, module, node.lineno))
                # `from pkg import mod` imports a module; `from pkg import Name` only `pkg`.
                found += [
                    Import(me, f"{module}.{a.name}", node.lineno)
                    for a in node.names
                    if _is_module(f"{module}.{a.name}") or a.name.startswith("_")
                ]
    return found


def _group(module: str) -> str:
    parts = module.split(".")
    if parts == ["paceline"]:
        return "__init__"
    return SAME_GROUP.get(parts[1], parts[1])


def test_every_group_has_a_layer():
    groups = {_group(_module_name(p)) for p in SRC.rglob("*.py")}
    assert groups - RANK.keys() == set(), "give each new top-level module a layer in LAYERS"


def test_imports_go_downward_only():
    upward = []
    for imp in _imports():
        if not imp.target.startswith("paceline."):
            continue
        mine, theirs = _group(imp.importer), _group(imp.target)
        if mine == theirs or RANK[theirs] < RANK[mine]:
            continue
        if (imp.importer, imp.target.rsplit(".", 1)[0]) in ALLOWED_UPWARD:
            continue
        upward.append(f"{imp.importer}:{imp.line} imports {imp.target}")
    assert upward == [], f"imports that go up or sideways (see LAYERS): {sorted(set(upward))}"


def test_policy_does_no_io():
    offenders = sorted(
        {
            f"{imp.importer}:{imp.line} imports {imp.target}"
            for imp in _imports()
            if imp.importer.startswith("paceline.policy")
            and any(
                imp.target == name or imp.target.startswith(name + ".") for name in POLICY_FORBIDDEN
            )
        }
    )
    assert offenders == [], f"policy is sans-I/O (ARCHITECTURE.md): {offenders}"


def _private_owner(target: str) -> str | None:
    """The package a ``_named`` part of ``target`` is private to, or None if all is public."""
    parts = target.split(".")
    for i, part in enumerate(parts):
        if part.startswith("_") and not part.startswith("__"):
            return ".".join(parts[:i])
    return None


def test_private_modules_and_names_stay_inside_their_package():
    # httpx's rule: `pkg._mod` is private to `pkg`. Another package uses what `pkg` re-exports
    # from its __init__ or a module of its without an underscore.
    leaks = []
    for imp in _imports():
        owner = _private_owner(imp.target)
        if owner is None:
            continue
        if imp.importer == owner or imp.importer.startswith(owner + "."):
            continue
        leaks.append(f"{imp.importer}:{imp.line} imports {imp.target}")
    assert leaks == [], f"private to another package: {sorted(set(leaks))}"


def test_the_command_line_imports_no_private_module_of_another_package():
    # The CLI is the library's first user: it goes through named modules, like a user would.
    leaks = sorted(
        {
            f"{imp.importer} imports {imp.target}"
            for imp in _imports()
            if imp.importer.startswith("paceline.cli")
            and imp.target.startswith("paceline.")
            and not imp.target.startswith("paceline.cli")
            and _private_owner(imp.target) is not None
        }
    )
    assert leaks == []
