"""The house keeps its shape: stage packages import only downward (import-linter's contract in
pyproject.toml), nothing unplaced, and ruff finds nothing."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = shutil.which("lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([LINT_IMPORTS, "--no-cache"], cwd=root, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(root), "PATH": str(Path(sys.executable).parent)})


@pytest.fixture(scope="module")
def contract_tool():
    if LINT_IMPORTS is None:
        pytest.skip("import-linter is not installed: pip install -e '.[test]'")


def test_the_stage_contract_holds(contract_tool):
    done = lint_imports(REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_an_upward_import_or_an_unplaced_module_breaks_the_contract(contract_tool, tmp_path):
    for folder in ("slm_core", "studio"):
        shutil.copytree(REPO / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    runs = tmp_path / "slm_core" / "run" / "runs.py"
    runs.write_text(runs.read_text() + "\nfrom slm_core.models.load import load_model  # noqa\n")
    (tmp_path / "slm_core" / "stray.py").write_text('"""A module no layer names."""\n')
    done = lint_imports(tmp_path)
    assert done.returncode != 0
    assert "slm_core.run is not allowed to import slm_core.models" in done.stdout
    assert "slm_core.stray" in done.stdout


def test_ruff_finds_nothing():
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed: pip install -e '.[test]'")
    done = subprocess.run([ruff, "check", "--no-cache", "."], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:]
