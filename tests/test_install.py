"""The README's install and test commands, as a fresh Debian machine runs them."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ("pytest", "pytest-timeout", "ruff", "playwright")


def _packages(path: Path) -> list[str]:
    lines = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    return [line for line in lines if line]


def test_runtime_and_dev_requirements_are_split():
    runtime = _packages(ROOT / "requirements.txt")
    dev = _packages(ROOT / "requirements-dev.txt")
    assert not [p for p in runtime if p.split("==")[0] in TOOLS]  # a Space installs these
    assert dev[0] == "-r requirements.txt"
    assert {p.split("==")[0] for p in dev[1:]} == set(TOOLS)
    assert all("==" in p for p in runtime + dev[1:])  # pinned


def test_readme_installs_into_a_virtual_environment_and_tests_with_the_dev_tools():
    readme = (ROOT / "README.md").read_text()
    head = readme[: readme.index("## The demo")]
    assert "python3 -m venv .venv && . .venv/bin/activate" in head
    assert "Python 3.11" in head and "externally managed" in head
    assert "pip install -r requirements-dev.txt && python -m pytest" in head
    assert "pip install -r requirements.txt && python app.py" in head
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python3 -m venv .venv-ci" in ci
    assert "pip install -r requirements-dev.txt && python -m pytest" in ci
