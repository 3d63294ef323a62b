"""The packaging metadata: what a fresh ``pip install -e .`` (``./dev demo``) prints."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


@pytest.mark.skipif(sys.version_info < (3, 11), reason="tomllib is 3.11+")
def test_license_is_an_spdx_string_with_a_setuptools_that_takes_it() -> None:
    # The table form (license = { text = "MIT" }) made setuptools print a 14-line deprecation
    # warning three times on every install; the string form needs setuptools 77 (PEP 639).
    import tomllib

    data = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))
    assert data["project"]["license"] == "MIT"
    requires = data["build-system"]["requires"]
    setuptools = next(r for r in requires if r.startswith("setuptools"))
    found = re.fullmatch(r"setuptools>=(\d+)(?:\.\d+)*", setuptools)
    assert found is not None, setuptools
    assert int(found.group(1)) >= 77
    classifiers = data["project"].get("classifiers", [])
    assert not [c for c in classifiers if c.startswith("License ::")]  # deprecated with SPDX
