#!/usr/bin/env bash
# One run of `python -m rlhf_jax.main` across several nodes under SLURM: `srun` starts one
# process per node and passes each the coordinator (the allocation's first node), the number of
# processes and its own index explicitly (--coordinator HOST:PORT --num_processes N --process_id I),
# so nothing depends on the run detecting SLURM by itself. Run from the repository root:
#
#   sbatch --nodes=H --gres=gpu:D [--partition=P --time=T] tools/launch/slurm.sh CONFIG WORKDIR [FLAGS...]
#
#   sbatch --nodes=2 --gres=gpu:8 --time=12:00:00 tools/launch/slurm.sh configs/instructgpt.py:tiny \
#       /shared/runs/tiny_2x8 --config.mesh.data=2 --config.mesh.fsdp=8 --config.mesh.tensor=1
#
# Mesh for H hosts of D devices each (rlhf_jax/sharding.py; the mesh spans every process's devices):
#   --config.mesh.data x --config.mesh.fsdp x --config.mesh.tensor = H*D; one of them may be -1
#   (it takes the remaining devices). The batch is split over data x fsdp; parameters and optimizer
#   state are sharded over fsdp (FSDP) and, for attention heads and the MLP, over tensor.
#   Typical: fsdp=D inside a host, data=H across hosts (data=H fsdp=D tensor=1). Use tensor > 1
#   only inside a host (data=H fsdp=D/2 tensor=2). Each stage's batch size must divide by data*fsdp.
#
# WORKDIR must be on a filesystem every node sees. Environment: RLHF_JAX_PYTHON (default: python3
# on PATH; activate the venv before sbatch, which exports the environment), RLHF_JAX_PORT (the
# coordinator's port, default 20000 + the job id mod 20000). FLAGS go to rlhf_jax.main unchanged.
#SBATCH --job-name=rlhf_jax
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --output=%x-%j.out
set -euo pipefail

if [ "$#" -lt 2 ]; then
  echo "usage: sbatch --nodes=H [options] tools/launch/slurm.sh CONFIG WORKDIR [--config.K=V ...]" >&2
  exit 2
fi
config="$1"
workdir="$2"
shift 2
: "${SLURM_JOB_ID:?not inside a SLURM job: submit this script with sbatch}"
python="${RLHF_JAX_PYTHON:-python3}"
port="${RLHF_JAX_PORT:-$((20000 + SLURM_JOB_ID % 20000))}"
mapfile -t hosts < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
if [ "${#hosts[@]}" -eq 0 ]; then
  echo "scontrol show hostnames '$SLURM_JOB_NODELIST' listed no host" >&2
  exit 1
fi
num_processes="${SLURM_NTASKS:-${#hosts[@]}}"
coordinator="${hosts[0]}:${port}"
echo "rlhf_jax: ${num_processes} processes on ${#hosts[@]} node(s), coordinator ${coordinator}, workdir ${workdir}"

# Each task's shell expands $SLURM_PROCID (its own index), hence the single quotes.
# shellcheck disable=SC2016
srun --ntasks="$num_processes" --ntasks-per-node=1 --kill-on-bad-exit=1 bash -c \
  'exec "$0" -m rlhf_jax.main --config "$1" --workdir "$2" --coordinator "$3" --num_processes "$4" \
     --process_id "$SLURM_PROCID" "${@:5}"' \
  "$python" "$config" "$workdir" "$coordinator" "$num_processes" "$@"
