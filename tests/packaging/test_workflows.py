"""The GitHub Actions workflows (never run from this project's machines): they parse, and every
command they run is one this repository has and the README or docs give."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.packaging.conftest import REPO

WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.yml"))
SCRIPTS = re.compile(r"(?:\.ci/run|scripts/[a-z]+|tests/e2e/run)\b")


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_parses_and_runs_only_this_repositorys_entry_points(path: Path) -> None:
    flow = yaml.safe_load(path.read_text())
    assert flow["jobs"], path
    docs = (REPO / "README.md").read_text() + (REPO / "docs" / "e2e.md").read_text()
    for name, job in flow["jobs"].items():
        assert job["runs-on"], name
        for step in job["steps"]:
            for script in SCRIPTS.findall(step.get("run", "")):
                assert (REPO / script).is_file(), f"{path.name} {name}: {script} does not exist"
                assert script in docs, f"{path.name} {name}: {script} is not a command the docs give"


def test_there_are_the_ci_and_release_workflows() -> None:
    assert [p.stem for p in WORKFLOWS] == ["ci", "release"]
