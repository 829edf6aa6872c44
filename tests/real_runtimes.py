"""Real runtimes for the tests: Apptainer, a test image, a host with Snakemake alone, and
the workflow files of a checkout. tests/runtimes/ holds the scripts that set them up.

They need root on Debian; elsewhere a test that uses them skips with the reason, and with
CI=true it fails instead: CI must run them.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import REPO, TINY_PARAMS, write_yaml

RUNTIMES = REPO / "tests/runtimes"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


# The tiny experiment the real runtimes run: one run per kind of job the workflow has
# (classifier, training option, Poincaré + HIER, untrained); each train and embed job asks for
# one GPU, of the two the jobs may share, little memory and little time.
RUNTIME_RUN_IDS = [
    "softmax-standard-s1",
    "proxydr-mds-s1",
    "pa_hier-standard-s1",
    "random-standard-s1",
]
RUNTIME_PARAMS = {
    **TINY_PARAMS,
    "runs": [
        {"model": "softmax"},
        {"model": "proxydr", "options": ["mds"]},
        {"model": "pa_hier"},
        {"model": "random"},
    ],
    "resources": {
        "training": {"gpus": 1, "threads": 1, "mem_mb": 2000, "runtime": 15},
        "other": {"threads": 1, "mem_mb": 2000, "runtime": 15},
    },
}


def require_real_runtimes() -> None:
    """Skip (fail under CI=true) where the real runtimes cannot be set up."""
    if os.geteuid() != 0:
        missing = "the real runtimes need root here (they install from Debian packages)"
    elif not Path("/etc/debian_version").is_file() or shutil.which("apt-get") is None:
        missing = "the real runtimes install from Debian packages: needs Debian with apt-get"
    elif not (Path(sys.prefix) / "pyvenv.cfg").is_file():
        missing = "the test image binds the tests' virtualenv: run the tests from a virtualenv"
    else:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true, so the real-runtime tests must run, but {missing}")
    pytest.skip(missing)


def run_timed(command: list[str], what: str, timeout: int, **options) -> str:
    """Run `command`, fail showing its output unless it succeeds, print how long it took."""
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, **options)
    assert result.returncode == 0, f"{what} failed:\n{(result.stdout + result.stderr)[-5000:]}"
    print(f"{what}: {time.monotonic() - started:.1f} s")
    return result.stdout


def build_image(directory: Path) -> Path:
    """A real Apptainer installed, and a test image that binds the tests' virtualenv."""
    require_real_runtimes()
    run_timed(["bash", str(RUNTIMES / "install-apptainer.sh")], "installing Apptainer", 900)
    sif = directory / "hierpipe-test.sif"
    build = ["bash", str(RUNTIMES / "build-test-image.sh"), str(sif), sys.prefix]
    run_timed(build, "building the test image", 1200)
    return sif


def apptainer_args(*args: str) -> str:
    """--apptainer-args that bind the repository and the tests' virtualenv into the image."""
    binds = [f"--bind {path}" for path in sorted({REPO, Path(sys.prefix).resolve()})]
    return "--apptainer-args=" + " ".join([*args, *binds])


def host_virtualenv(venv: Path, *extra: str) -> Path:
    """A virtualenv with workflow/host-requirements.txt (and `extra` packages) alone."""
    run_timed([sys._base_executable, "-m", "venv", str(venv)], "creating a host virtualenv", 120)
    pip = [str(venv / "bin/python"), "-m", "pip", "install", "-q"]
    requirements = ["-r", str(REPO / "workflow/host-requirements.txt"), *extra]
    run_timed([*pip, *requirements], "installing the host", 900)
    for module in ("torch", "timm", "mlflow", "umap", "hierpipe"):
        # -I: neither the working directory (a checkout has mlflow/ and hierpipe/) nor the
        # environment on sys.path
        probe = subprocess.run(
            [str(venv / "bin/python"), "-I", "-c", f"import {module}"], capture_output=True
        )
        assert probe.returncode != 0, f"the host virtualenv should not have {module}"
    return venv


def workflow_checkout(root: Path, params: dict) -> Path:
    """A checkout's workflow files and package, with `params` as params/tiny.yaml."""
    root.mkdir(parents=True)
    shutil.copy(REPO / "Snakefile", root / "Snakefile")
    for folder in ("workflow", "params", "hierpipe"):
        ignore = shutil.ignore_patterns("__pycache__")
        shutil.copytree(REPO / folder, root / folder, ignore=ignore)
    write_yaml(params, root / "params/tiny.yaml")
    return root


def host_environment() -> dict[str, str]:
    """The tests' environment with the tests' virtualenv first on PATH (a full install)."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def run_tiny_on_host(root: Path) -> Path:
    """RUNTIME_PARAMS run plainly on this machine, from the tests' virtualenv, in a checkout
    made at `root`: what the runs in the image and through SLURM must equal bitwise."""
    checkout = workflow_checkout(root, RUNTIME_PARAMS)
    command = [sys.executable, "-m", "snakemake", "--cores", "2"]
    command += ["--configfile", "params/tiny.yaml"]
    host = host_environment()
    run_timed(command, "the tiny experiment on the host", 1500, cwd=checkout, env=host)
    return checkout


# The site settings README tells SLURM users to set in their copy of the profile
SLURM_SITE_SETTINGS = (
    "# default-resources:\n#   slurm_partition: <your partition>\n"
    "#   slurm_account: <your account>\n"
)


def slurm_profile_copy(root: Path, partition: str, account: str) -> str:
    """workflow/profiles/slurm copied into `root` with the partition and account set."""
    shipped = (REPO / "workflow/profiles/slurm/config.yaml").read_text()
    assert SLURM_SITE_SETTINGS in shipped, "the shipped profile no longer has its site settings"
    mine = f"default-resources:\n  slurm_partition: {partition}\n  slurm_account: {account}\n"
    (root / "my-slurm-profile").mkdir()
    (root / "my-slurm-profile/config.yaml").write_text(shipped.replace(SLURM_SITE_SETTINGS, mine))
    return "my-slurm-profile"


@contextmanager
def slurm_cluster(cpus: int) -> Iterator[dict[str, str]]:
    """A real one-node SLURM with accounting and two GPUs (tests/runtimes/slurm.sh) for the
    duration; its environment (SLURM_CONF, SLURMRT_*). Every daemon is stopped at the end."""
    require_real_runtimes()
    # short: the daemons' Unix sockets live below it
    directory = Path(tempfile.mkdtemp(prefix="hp-slurm-", dir="/tmp"))
    script = ["bash", str(RUNTIMES / "slurm.sh")]
    started = {**os.environ, "SLURMRT_CPUS": str(cpus)}
    run_timed([*script, "start", str(directory)], "starting SLURM", 600, env=started)
    environ = {}
    for line in (directory / "env").read_text().splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        environ[key] = os.path.expandvars(value.strip('"'))
    try:
        yield environ
    finally:
        run_timed([*script, "stop", str(directory)], "stopping SLURM", 300)
        shutil.rmtree(directory, ignore_errors=True)


def slurm_command(
    root: Path, cluster: dict[str, str], host_venv: Path, image: Path, *args: str, **environ: str
) -> tuple[list[str], dict[str, str]]:
    """README's SLURM command on the tiny params of `root`, from the host virtualenv with the
    profile as users copy it and the test image bound to the tests' virtualenv; and the login
    node's environment, plus `environ`."""
    login_node = {
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": "C.UTF-8",
        "SLURM_CONF": cluster["SLURM_CONF"],
        "PATH": f"{host_venv / 'bin'}:{cluster['SLURMRT_BIN']}:{SYSTEM_PATH}",
    }
    command = [
        str(host_venv / "bin/snakemake"),
        *args,
        "--profile",
        slurm_profile_copy(root, cluster["SLURMRT_PARTITION"], cluster["SLURMRT_ACCOUNT"]),
        apptainer_args("--nv", "--cleanenv"),
        "--configfile",
        "params/tiny.yaml",
        "--config",
        f"container={image}",
    ]
    return command, {**login_node, **environ}
