#!/usr/bin/env bash
# One run of `python -m rlhf_jax.main` across the hosts of a Cloud TPU VM slice: the same command
# on every worker (`gcloud compute tpus tpu-vm ssh NAME --zone Z --worker=all --command ...`), with
# --distributed=on: on a TPU VM jax.distributed.initialize() needs no arguments (it reads the
# coordinator, the process count and index from the TPU metadata), so the command carries none.
#
#   tools/launch/tpu_vm.sh NAME ZONE CONFIG WORKDIR [FLAGS...]
#
#   tools/launch/tpu_vm.sh my-v4-32 us-central2-b configs/instructgpt.py:tiny /mnt/shared/runs/v4_32 \
#       --config.mesh.data=4 --config.mesh.fsdp=4 --config.mesh.tensor=1
#
# Mesh for H hosts of D devices each (rlhf_jax/sharding.py; the mesh spans every host's devices):
#   --config.mesh.data x --config.mesh.fsdp x --config.mesh.tensor = H*D; one of them may be -1
#   (it takes the remaining devices). The batch is split over data x fsdp; parameters and optimizer
#   state are sharded over fsdp (FSDP) and, for attention heads and the MLP, over tensor.
#   Typical: fsdp=D inside a host, data=H across hosts (a v4-32 is H=4 hosts of D=4 chips:
#   data=4 fsdp=4 tensor=1). Each stage's batch size must divide by data*fsdp.
#
# Every worker needs the same checkout and environment (RLHF_JAX_REMOTE_DIR, default rlhf_jax in
# the home directory; RLHF_JAX_REMOTE_PYTHON, default .venv/bin/python inside it) and WORKDIR on a
# filesystem all workers see (NFS, Filestore, a gcsfuse mount). The gcloud project is gcloud's
# (or CLOUDSDK_CORE_PROJECT). RLHF_JAX_DRY_RUN=1 prints the gcloud command instead of running it.
set -euo pipefail

if [ "$#" -lt 4 ]; then
  echo "usage: tools/launch/tpu_vm.sh NAME ZONE CONFIG WORKDIR [--config.K=V ...]" >&2
  exit 2
fi
name="$1"
zone="$2"
config="$3"
workdir="$4"
shift 4
remote_dir="${RLHF_JAX_REMOTE_DIR:-rlhf_jax}"
remote_python="${RLHF_JAX_REMOTE_PYTHON:-.venv/bin/python}"

remote="cd $(printf '%q' "$remote_dir") && $(printf '%q' "$remote_python") -m rlhf_jax.main"
remote+=" --config $(printf '%q' "$config") --workdir $(printf '%q' "$workdir") --distributed=on"
for arg in "$@"; do
  remote+=" $(printf '%q' "$arg")"
done
cmd=(gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" --worker=all --command "$remote")
if [ "${RLHF_JAX_DRY_RUN:-0}" = 1 ]; then
  printf '%s\n' "${cmd[@]}"
  exit 0
fi
exec "${cmd[@]}"
