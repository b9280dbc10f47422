"""The sbatch template's launch path: Lightning takes rank and world size from SLURM_* variables."""

import subprocess
import sys

from conftest import ROOT

PROGRAM = r"""
import sys
sys.path.insert(0, ".")
from pretrain.tinyllama import make_fabric
from pretrain.train_args import TrainArgs
fabric, name = make_fabric(TrainArgs(devices=2, num_nodes=2, max_steps=1))
env = fabric._connector.cluster_environment
print(type(env).__name__, name, env.global_rank(), env.world_size(), env.local_rank(), env.node_rank())
"""


def test_rank_and_world_size_from_slurm():
    env = {"PATH": "/usr/bin:/bin", "SLURM_NTASKS": "4", "SLURM_NTASKS_PER_NODE": "2", "SLURM_JOB_NUM_NODES": "2",
           "SLURM_NNODES": "2", "SLURM_PROCID": "3", "SLURM_LOCALID": "1", "SLURM_NODEID": "1",
           "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "tinyllama-pretrain", "SLURM_NODELIST": "node[01-02]",
           "MASTER_ADDR": "node01", "MASTER_PORT": "24242"}
    result = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True, cwd=ROOT, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["SLURMEnvironment", "fsdp", "3", "4", "1", "1"]


def test_sbatch_passes_devices_nodes_and_resume():
    text = (ROOT / "scripts" / "slurm" / "pretrain.sbatch").read_text()
    assert "#SBATCH --signal=USR1@" in text and "#SBATCH --requeue" in text
    assert "srun" in text and "--num_nodes \"$SLURM_JOB_NUM_NODES\"" in text and "--resume auto" in text
    assert subprocess.run(["bash", "-n", str(ROOT / "scripts" / "slurm" / "pretrain.sbatch")]).returncode == 0
