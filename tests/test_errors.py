"""Every error paceline raises is a PacelineError, and still the built-in kind it was."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

import paceline
from paceline.errors import PacelineError

SRC = Path(paceline.__file__).resolve().parent

# The one exception class that is deliberately not a PacelineError, and why.
NOT_PACELINE_ERRORS = {
    # Ctrl-C / SIGTERM during a sync batch: it must pass through `except Exception` (and
    # `except PacelineError`) handlers the way a KeyboardInterrupt always does.
    "paceline._results.BatchInterrupted",
}

# Classes that were a built-in kind before they became PacelineErrors: code that catches the
# built-in kind must keep catching them.
BUILTIN_KINDS: dict[str, type[BaseException]] = {
    "paceline.errors.InvalidArgument": ValueError,
    "paceline.errors.InvalidArgumentType": TypeError,
    "paceline.errors.InvalidState": RuntimeError,
    "paceline.errors.AlreadySettled": RuntimeError,
    "paceline.policy.rate.RateSpecError": ValueError,
    "paceline.runners.settle.DuplicateKey": ValueError,
    "paceline.faces.bulk.MissingFromBulkAnswer": LookupError,
    "paceline.http._messages.InvalidRequest": ValueError,
    "paceline.http._messages.ServerUnreachable": ConnectionError,
    "paceline.http._messages.HttpTransportError": ConnectionError,
    "paceline.http._messages.HttpTimeout": TimeoutError,
    "paceline.runners.commands.CommandTimedOut": TimeoutError,
    "paceline.cli.templates.TemplateError": ValueError,
    "paceline.cli.templates.UnknownColumn": ValueError,
    "paceline.cli.templates.MissingField": LookupError,
}


def _all_modules() -> list[str]:
    names = ["paceline"]
    for info in pkgutil.walk_packages([str(SRC)], prefix="paceline."):
        names.append(info.name)
    return sorted(names)


def _exception_classes() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for name in _all_modules():
        module = importlib.import_module(name)
        for obj in vars(module).values():
            if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == name:
                found[f"{name}.{obj.__qualname__}"] = obj
    return found


def test_every_exception_class_paceline_defines_is_a_paceline_error():
    classes = _exception_classes()
    assert len(classes) >= 30  # the walk found the package, not an empty tree
    outside = sorted(
        name
        for name, cls in classes.items()
        if not issubclass(cls, PacelineError) and name not in NOT_PACELINE_ERRORS
    )
    assert outside == [], f"derive these from paceline.errors.PacelineError: {outside}"


def test_batch_interrupted_stays_a_keyboard_interrupt_and_not_a_paceline_error():
    assert issubclass(paceline.BatchInterrupted, KeyboardInterrupt)
    assert not issubclass(paceline.BatchInterrupted, Exception)
    assert set(NOT_PACELINE_ERRORS) <= set(_exception_classes())


@pytest.mark.parametrize(("name", "kind"), sorted(BUILTIN_KINDS.items()))
def test_errors_that_were_builtin_kinds_still_are(name, kind):
    cls = _exception_classes()[name]
    assert issubclass(cls, PacelineError)
    assert issubclass(cls, kind)


def test_except_value_error_still_catches_a_bad_rate():
    with pytest.raises(ValueError, match="unit 'x'") as caught:
        paceline.RateLimiter("10/x")
    assert isinstance(caught.value, PacelineError)
    assert isinstance(caught.value, paceline.RateSpecError)


def test_except_value_error_still_catches_a_bad_argument():
    with pytest.raises(ValueError, match="attempts=0") as caught:
        paceline.RetryPolicy(attempts=0)
    assert isinstance(caught.value, PacelineError)


def test_throttled_is_a_paceline_error_that_operations_raise():
    assert issubclass(paceline.Throttled, PacelineError)
    assert paceline.Throttled(retry_after=2.0).retry_after == 2.0


# Raising a bare built-in from paceline's own code would be an error outside PacelineError.
BARE_BUILTINS = {"ValueError", "TypeError", "RuntimeError", "LookupError", "KeyError"}


def test_paceline_raises_no_bare_builtin_errors():
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Raise) or node.exc is None:
                continue
            target = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            if isinstance(target, ast.Name) and target.id in BARE_BUILTINS:
                offenders.append(f"{path.relative_to(SRC)}:{node.lineno} raises {target.id}")
    assert offenders == [], (
        "raise a paceline.errors class (InvalidArgument, InvalidArgumentType, InvalidState) "
        f"instead: {offenders}"
    )
