# Sourced by pretrain.sbatch and stages.sbatch inside a job, from the repository root: the settings every
# multi-process training job needs, made the same way in both. Sets PYTHON, GPUS_PER_NODE, NODES, MASTER_ADDR,
# MASTER_PORT, SRUN_CPUS_PER_TASK, OMP_NUM_THREADS and LAUNCH (the srun prefix); refuses, in one line, a job
# whose tasks per node differ from its GPUs per node.

PYTHON=${PYTHON:-.venv/bin/python}
NODES=${SLURM_JOB_NUM_NODES:-1}
TASKS_PER_NODE=${SLURM_NTASKS_PER_NODE:-$(( ${SLURM_NTASKS:-1} / NODES ))}
# --gpus-per-node may be typed (h100:8)
GPUS_PER_NODE=${GPUS_PER_NODE:-${SLURM_GPUS_PER_NODE:+${SLURM_GPUS_PER_NODE##*:}}}
GPUS_PER_NODE=${GPUS_PER_NODE:-$TASKS_PER_NODE}
if [ "$TASKS_PER_NODE" != "$GPUS_PER_NODE" ]; then
    echo "error: this job runs $TASKS_PER_NODE task(s) per node but has $GPUS_PER_NODE GPU(s) per node: every task is one" \
         "GPU's process; submit with --ntasks-per-node=$GPUS_PER_NODE --gpus-per-node=$GPUS_PER_NODE" \
         "(or set GPUS_PER_NODE=$TASKS_PER_NODE)" >&2
    exit 1
fi
# one rendezvous address for every task: the first node of the allocation (no `| head`: under pipefail a
# SIGPIPE of scontrol would end the job)
HOSTS=$(scontrol show hostnames "$SLURM_JOB_NODELIST")
export MASTER_ADDR=${HOSTS%%$'\n'*}
export MASTER_PORT=${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}
# srun stopped inheriting --cpus-per-task from sbatch in Slurm 22.05: without this every task gets one CPU
export SRUN_CPUS_PER_TASK=${SLURM_CPUS_PER_TASK:-8}
export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-8}
LAUNCH="srun --kill-on-bad-exit=1"
mkdir -p logs
