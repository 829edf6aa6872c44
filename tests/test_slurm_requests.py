"""What the workflow asks SLURM about before any job: the sbatch options of a request.

SLURM's verdict on them is tested on a real cluster in tests/test_slurm.py.
"""

from hierpipe.runtime.slurm_requests import SlurmRequest


def test_a_gpu_request_becomes_the_options_the_slurm_plugin_submits_it_with():
    request = SlurmRequest(
        jobs="group run (embed, evaluate, train)",
        cpus=8,
        gpus=1,
        mem_mb=32000,
        runtime_minutes=1260,
        partition="gpu",
        account="lab",
    )
    assert request.sbatch_options() == [
        "--cpus-per-task=8",
        "--partition=gpu",
        "--account=lab",
        "--mem=32000",
        "--time=1260",
        "--gpus=1",
    ]
    assert request.describe() == "8 CPUs, 1 GPUs, 32000 MB, 1260 min on partition gpu"


def test_a_cpu_request_without_site_settings_leaves_partition_and_account_to_slurm():
    request = SlurmRequest(jobs="rule figures_maps", cpus=2)
    assert request.sbatch_options() == ["--cpus-per-task=2"]
    assert request.describe() == "2 CPUs, 0 GPUs on the default partition"


def test_identical_requests_are_asked_about_once():
    runs = [SlurmRequest(jobs="group run (embed, evaluate, train)", cpus=1) for _ in range(3)]
    assert len(set(runs)) == 1
