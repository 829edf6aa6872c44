"""The code's shape, checked by the tools that define it: the package's import contract
(pyproject.toml [tool.importlinter]) and the workflow's conventions (snakemake --lint,
snakefmt)."""

import subprocess
import sys
from pathlib import Path

from conftest import REPO

TOOLS = Path(sys.executable).parent


def _run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)


def test_stages_import_downwards_and_the_parse_imports_no_scientific_stack():
    result = _run(str(TOOLS / "lint-imports"))
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_snakemake_lint_is_clean():
    result = _run(str(TOOLS / "snakemake"), "--lint")
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "Lints for" not in output, output[-5000:]


def test_the_workflow_is_snakefmt_formatted():
    rules = sorted(str(path.relative_to(REPO)) for path in (REPO / "workflow/rules").glob("*.smk"))
    result = _run(str(TOOLS / "snakefmt"), "--check", "--diff", "Snakefile", *rules)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]


# Modules that a job's start-up need not pay for: geoopt (with the scipy.optimize it imports,
# 0.7 s), loaded where a Poincaré ball is first used, and scipy.stats (0.4 s), which the
# training, export and evaluation jobs do not use.
_LOADED_ON_FIRST_USE = ("geoopt", "scipy.stats")


def test_jobs_leave_geoopt_and_scipy_stats_until_they_are_used():
    probe = (
        "import sys, hierpipe.train.engine, hierpipe.evaluation.export, "
        "hierpipe.evaluation.evaluate; "
        f"print([m for m in {_LOADED_ON_FIRST_USE!r} if m in sys.modules])"
    )
    assert _run(sys.executable, "-c", probe).stdout.strip() == "[]"
