"""environment.yml and pyproject.toml describe the same environment."""

import re
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    """The normalized package name of a requirement string."""
    return re.split(r"[<>=!~ \[]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def pyproject_requirements() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    return {_name(r): r.replace(" ", "") for r in reqs}


def conda_pip_requirements() -> dict[str, str]:
    lines = (ROOT / "environment.yml").read_text().splitlines()
    start = lines.index("  - pip:")
    reqs = [l.strip()[2:] for l in lines[start + 1 :] if l.strip().startswith("- ") and not l.strip().startswith("- -e")]
    return {_name(r): r.replace(" ", "") for r in reqs}


def test_same_packages_and_pins():
    assert conda_pip_requirements() == pyproject_requirements()


def test_environment_installs_this_package():
    assert "- -e ." in (ROOT / "environment.yml").read_text()
