#!/bin/bash
# Data-parallel FAB on several nodes under SLURM: srun starts one torchrun per node, the torchruns meet at a c10d
# rendezvous on the first node, and each starts one rank per GPU (NCCL). Rank 0 writes metrics, checkpoints and
# results into OUT, which must be on a file system every node sees (every rank reads the checkpoint on --resume).
#
#   sbatch examples/slurm_multinode.sh                           # examples/aldp_fab.py, GPU mode, 2 nodes x 4 GPUs
#   sbatch --nodes 4 examples/slurm_multinode.sh                 # more nodes: the global batch grows with the ranks
#   SCRIPT=examples/lj13_fab.py sbatch examples/slurm_multinode.sh --iterations 5000
#   NPROC_PER_NODE=8 sbatch --gpus-per-node 0 examples/slurm_multinode.sh --device cpu   # CPU nodes, gloo
#
# Arguments after the script name go to the training script. --resume makes a requeued or resubmitted job continue
# from OUT/checkpoint.pt, also on a different number of nodes (replay buffers are re-sharded; see the README).
# A failing rank ends the job: torchrun stops its node's other ranks, --kill-on-bad-exit stops the other nodes.
#
#SBATCH --job-name=bgflow-fab
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=32
#SBATCH --time=12:00:00
#SBATCH --output=%x-%j.out
set -euo pipefail

SCRIPT=${SCRIPT:-examples/aldp_fab.py}
NPROC_PER_NODE=${NPROC_PER_NODE:-${SLURM_GPUS_ON_NODE:-4}}
OUT=${OUT:-runs/$(basename "$SCRIPT" .py)_slurm}
PORT=${PORT:-29500}
HEAD_NODE=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
# each rank gets its share of the node's cores (torch threads; an OpenMMEnergy pool should use as many workers)
CPUS=${SLURM_CPUS_PER_TASK:-$NPROC_PER_NODE}
export OMP_NUM_THREADS=$(( CPUS / NPROC_PER_NODE > 0 ? CPUS / NPROC_PER_NODE : 1 ))

echo "job $SLURM_JOB_ID: $SLURM_NNODES nodes x $NPROC_PER_NODE ranks, rendezvous at $HEAD_NODE:$PORT, out $OUT"
srun --kill-on-bad-exit=1 --ntasks-per-node=1 \
    python -m torch.distributed.run \
        --nnodes "$SLURM_NNODES" \
        --nproc_per_node "$NPROC_PER_NODE" \
        --rdzv_id "$SLURM_JOB_ID" \
        --rdzv_backend c10d \
        --rdzv_endpoint "$HEAD_NODE:$PORT" \
        --max_restarts 0 \
        "$SCRIPT" --out "$OUT" --resume --no-progress "$@"
