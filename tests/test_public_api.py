"""The public API, pinned: each public module's ``__all__`` and the signatures of what it
holds, compared with the checked-in ``tests/public_api.json``.

A change to the public surface must be deliberate: regenerate the snapshot with

    PACELINE_UPDATE_API_SNAPSHOT=1 python -m pytest tests/test_public_api.py

and commit the new ``tests/public_api.json`` with the change (the diff is the API review).
"""

from __future__ import annotations

import enum
import importlib
import inspect
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

SNAPSHOT = Path(__file__).with_name("public_api.json")
UPDATE_VARIABLE = "PACELINE_UPDATE_API_SNAPSHOT"

# The modules users import. Everything else is internal to paceline, `_named` or not.
PUBLIC_MODULES = (
    "paceline",
    "paceline.cli",
    "paceline.errors",
    "paceline.http",
    "paceline.signals",
    "paceline.stores",
    "paceline.testing",
    "paceline.testing.api_server",
    "paceline.testing.hostile",
    "paceline.testing.nginx",
)

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _signature(obj: Any) -> str | None:
    try:
        text = str(inspect.signature(obj))
    except (TypeError, ValueError):  # builtins and some C types have none
        return None
    return _ADDRESS.sub("", text)


def _own_attributes(cls: type) -> dict[str, Any]:
    """Public attributes a paceline class (or a paceline base of it) defines."""
    found: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        if not klass.__module__.startswith("paceline"):
            continue
        for name, value in vars(klass).items():
            if not name.startswith("_"):
                found[name] = value
    return found


def _describe_member(value: Any) -> str:
    if isinstance(value, property):
        return "property"
    if isinstance(value, (classmethod, staticmethod)):
        kind = type(value).__name__
        return f"{kind}{_signature(value.__func__)}"
    if inspect.isfunction(value):
        return f"method{_signature(value)}"
    if isinstance(value, type):
        return "class"
    return f"attribute: {type(value).__name__}"


def _describe(obj: Any) -> Any:
    if inspect.isclass(obj):
        if issubclass(obj, enum.Enum):
            return {"kind": "enum", "members": [m.name for m in obj]}
        described: dict[str, Any] = {"kind": "class", "signature": _signature(obj)}
        if issubclass(obj, BaseException):
            described["bases"] = [base.__name__ for base in obj.__mro__[1:]]
        described["members"] = {
            name: _describe_member(value) for name, value in sorted(_own_attributes(obj).items())
        }
        return described
    if inspect.isfunction(obj) or inspect.isbuiltin(obj):
        kind = "async function" if inspect.iscoroutinefunction(obj) else "function"
        return {"kind": kind, "signature": _signature(obj)}
    if inspect.ismodule(obj):
        return {"kind": "module"}
    # Type aliases and constants: the type only (a constant's value may be tuned freely).
    origin = getattr(obj, "__origin__", None)
    if origin is not None or type(obj).__name__ in {"UnionType", "_UnionGenericAlias"}:
        return {"kind": "type alias", "value": _ADDRESS.sub("", repr(obj))}
    return {"kind": "data", "type": type(obj).__name__}


def public_api() -> dict[str, Any]:
    """Each public module's ``__all__`` and what every name in it is."""
    api: dict[str, Any] = {}
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        names = list(module.__all__)
        api[module_name] = {
            "__all__": sorted(names),
            "names": {name: _describe(getattr(module, name)) for name in sorted(names)},
        }
    return api


def _differences(old: dict[str, Any], new: dict[str, Any], path: str = "") -> list[str]:
    lines: list[str] = []
    for key in sorted(old.keys() | new.keys()):
        where = f"{path}.{key}" if path else key
        if key not in new:
            lines.append(f"removed: {where}")
        elif key not in old:
            lines.append(f"added:   {where}")
        elif isinstance(old[key], dict) and isinstance(new[key], dict):
            lines += _differences(old[key], new[key], where)
        elif old[key] != new[key]:
            lines.append(f"changed: {where}: {old[key]!r} -> {new[key]!r}")
    return lines


def test_every_public_module_lists_its_names_in_all():
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        assert hasattr(module, "__all__"), f"{module_name} needs an __all__"
        missing = [name for name in module.__all__ if not hasattr(module, name)]
        assert missing == [], f"{module_name}.__all__ names what it does not have: {missing}"


def test_public_api_matches_the_snapshot():
    current = public_api()
    if os.environ.get(UPDATE_VARIABLE) == "1":
        SNAPSHOT.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        pytest.skip(f"{SNAPSHOT.name} regenerated ({UPDATE_VARIABLE}=1): review and commit it")
    assert SNAPSHOT.exists(), (
        f"no {SNAPSHOT.name}: create it with {UPDATE_VARIABLE}=1 python -m pytest {__file__}"
    )
    recorded = json.loads(SNAPSHOT.read_text(encoding="utf-8"))
    changes = _differences(recorded, current)
    assert changes == [], (
        "the public API changed:\n  "
        + "\n  ".join(changes)
        + f"\nIf that is deliberate, regenerate the snapshot with\n  {UPDATE_VARIABLE}=1 "
        f"python -m pytest tests/test_public_api.py\nand commit tests/{SNAPSHOT.name}."
    )


def test_entry_points_take_what_the_seeds_name():
    # Seed names and parameters users' code depends on (ARCHITECTURE.md, "The public API").
    import paceline

    def parameters(obj: Any) -> list[str]:
        return list(inspect.signature(obj).parameters)

    assert parameters(paceline.BatchExecutor)[:3] == [
        "stop_on_error",
        "rate_limiter",
        "max_workers",
    ]
    assert parameters(paceline.RateLimitedExecutor)[:2] == ["rate_limiter", "stop_on_error"]
    assert parameters(paceline.RateLimiter)[:2] == ["max_requests", "time_window_seconds"]
    assert parameters(paceline.batch_execute)[:5] == [
        "keys",
        "operation",
        "max_concurrent",
        "on_progress",
        "fail_fast",
    ]
    assert parameters(paceline.BatchItemResult)[:4] == ["item_id", "success", "result", "error"]
    assert parameters(paceline.BatchResult)[:2] == ["items", "total"]
