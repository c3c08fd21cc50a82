"""The release automation in .github/workflows: actionlint-clean, and doing what the docs say.

No CI service runs these workflows here; actionlint (syntax, expressions, job
needs, action inputs it knows) is the check we can run, and the assertions
below pin the parts the release depends on: Home Assistant's builder actions
for the multi-arch add-on and relay images, PyPI trusted publishing with no
stored token, and the wheel of the checkout in the add-on's build context.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / ".github" / "workflows"
ACTIONLINT = shutil.which("actionlint", path=str(Path(sys.executable).parent)) or shutil.which(
    "actionlint"
)
BUILDER = "home-assistant/builder/actions/"


def actionlint(*paths: Path) -> subprocess.CompletedProcess[str]:
    assert ACTIONLINT, "actionlint comes with the test extra (pip install -e '.[test]')"
    return subprocess.run(
        [ACTIONLINT, "-no-color", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=False,
    )


def load(name: str) -> dict[str, Any]:
    data = yaml.safe_load((WORKFLOWS / name).read_text(encoding="utf-8"))
    # YAML 1.1 reads the key `on` as True.
    data["on"] = data.pop(True)
    return data


def steps(job: dict[str, Any]) -> list[dict[str, Any]]:
    return list(job.get("steps", []))


def uses(job: dict[str, Any]) -> list[str]:
    return [s["uses"] for s in steps(job) if "uses" in s]


def test_actionlint_passes() -> None:
    files = sorted(WORKFLOWS.glob("*.yaml"))
    assert {f.name for f in files} == {"addon.yaml", "release.yaml"}
    result = actionlint(*files)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_can_fail(tmp_path: Path) -> None:
    broken = tmp_path / ".github" / "workflows" / "addon.yaml"
    broken.parent.mkdir(parents=True)
    text = (WORKFLOWS / "addon.yaml").read_text(encoding="utf-8")
    broken.write_text(text.replace("needs.prepare.outputs.version", "needs.prepare.outputs.vrsion"))
    result = actionlint(broken)
    assert result.returncode == 1
    assert "vrsion" in result.stdout


def test_addon_images_are_built_with_home_assistants_builder() -> None:
    workflow = load("addon.yaml")
    assert set(workflow["on"]) == {"pull_request", "push", "release"}
    assert workflow["permissions"] == {"contents": "read"}
    jobs = workflow["jobs"]
    assert any(u.startswith(BUILDER + "prepare-multi-arch-matrix@") for u in uses(jobs["prepare"]))
    build = jobs["build"]
    runs = [s.get("run", "") for s in steps(build)]
    image_step = next(s for s in steps(build) if s.get("uses", "").startswith(BUILDER))
    # The wheel goes into the context before the image is built from it.
    assert steps(build).index(image_step) > next(
        i for i, r in enumerate(runs) if r == "python packaging/release.py addon-context"
    )
    assert image_step["uses"].startswith(BUILDER + "build-image@")
    assert image_step["with"]["context"] == "./homeport_addon"
    # Pushed only for a published release; pull requests only build.
    assert image_step["with"]["push"] == "${{ github.event_name == 'release' }}"
    manifest = jobs["manifest"]
    assert manifest["if"] == "github.event_name == 'release'"
    assert uses(manifest)[0].startswith(BUILDER + "publish-multi-arch-manifest@")
    lint = uses(jobs["lint"])
    assert any(u.startswith("frenck/action-addon-linter@") for u in lint)


def test_pypi_by_trusted_publishing_and_a_relay_image() -> None:
    workflow = load("release.yaml")
    assert set(workflow["on"]) == {"release"}
    jobs = workflow["jobs"]
    pypi = jobs["pypi"]
    assert pypi["permissions"] == {"id-token": "write"}
    assert pypi["environment"]["name"] == "pypi"
    publish = next(s for s in steps(pypi) if s.get("uses", "").startswith("pypa/"))
    assert publish["uses"] == "pypa/gh-action-pypi-publish@release/v1"
    # Trusted publishing: no password, no token, no secret anywhere in the job.
    assert "with" not in publish
    assert (
        "secrets."
        not in (WORKFLOWS / "release.yaml").read_text().split("pypi:")[1].split("relay-matrix:")[0]
    )
    check = next(s for s in steps(jobs["package"]) if s.get("id") == "check")
    assert "packaging/release.py check --tag" in check["run"]
    relay = jobs["relay-image"]
    build = next(s for s in steps(relay) if s.get("uses", "").startswith(BUILDER))
    assert build["with"]["file"] == "packaging/relay/Dockerfile"
    assert (ROOT / build["with"]["file"]).exists()


@pytest.mark.parametrize("name", ["addon.yaml", "release.yaml"])
def test_no_untrusted_input_in_run_steps(name: str) -> None:
    """Script injection: event fields (titles, branch names) never go into `run:`."""
    for job in load(name)["jobs"].values():
        for step in steps(job):
            script = step.get("run", "")
            assert "github.event." not in script, (name, step)
            assert "github.head_ref" not in script, (name, step)
