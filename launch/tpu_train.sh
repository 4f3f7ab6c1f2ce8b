#!/usr/bin/env bash
# Train MV-RAG on a Cloud TPU VM slice: check the plan, create or reuse the TPU, copy the code, install, start
# `mvrag train` on every worker, stream worker 0's log.
#
#   launch/tpu_train.sh --tpu mvrag-v5e --zone us-west4-a --project my-proj --accelerator_type v5litepod-8 \
#       --workdir gs://my-bucket/runs/r1 --data gs://my-bucket/mvrag_data --data_mode gcsfuse \
#       --config configs/train.py:size=full -- --config.train.init=/ckpt/mvrag --config.train.batch_size=24
#
# Everything after `--` is passed to both `mvrag plan` and `mvrag train` (config overrides).
# --dry_run prints every command instead of running it. Before touching the cloud, `mvrag plan` compiles the train
# step for the accelerator type (libtpu, no TPU needed; see requirements-tpu.txt) and a config that does not fit the
# chip's HBM is refused. --plan_json FILE uses a saved plan report (`mvrag plan --json` output) instead.
# --num_slices N (multislice over DCN): one queued resource of N slices (`--node-count N`, nodes TPU-0..TPU-N-1); the
# runtime gives every worker its MEGASCALE_* environment, and `mvrag train --num_slices N` splits the batch over them.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: launch/tpu_train.sh --tpu NAME --zone ZONE --accelerator_type TYPE --workdir gs://... --data gs://...
                           [--project P] [--runtime_version V] [--config FILE[:ARGS]] [--mesh data=1,fsdp=8]
                           [--data_mode gcsfuse|copy] [--data_dir DIR] [--plan_json FILE] [--skip_plan]
                           [--num_slices N] [--dry_run] [-- CONFIG_OVERRIDES...]
  --tpu               TPU VM name (created if absent, reused if present)
  --zone              GCP zone, e.g. us-west4-a
  --project           GCP project (default: gcloud's configured project)
  --accelerator_type  e.g. v5litepod-8, v4-8, v5p-8, v6e-8 (also the topology `mvrag plan` compiles for)
  --runtime_version   TPU VM software version (default: the usual one for the chip)
  --workdir           gs:// folder for checkpoints, metrics.jsonl, tb/, samples/ and loss.png (mvrag train
                      --workdir); every worker writes it directly (gcsfs + tensorstore, requirements-tpu.txt)
  --config            train config (default configs/train.py:size=full)
  --mesh              mesh for the plan, e.g. data=1,fsdp=8 (default: the config's mesh block)
  --data              gs://bucket/path of the ArrayRecord datasets (tfds data_dir)
  --data_mode         gcsfuse: mount the bucket on every worker (default); copy: gcloud storage cp -r to local disk
  --data_dir          where the data appears on the workers (default /tmp/mvrag_data or /mnt/gcs/BUCKET/PATH)
  --plan_json         use this saved `mvrag plan --json` report instead of compiling the plan
  --skip_plan         do not check the plan (not recommended)
  --num_slices        slices of --accelerator_type joined over DCN (default 1); N > 1 creates the queued resource
                      --tpu with --node-count N (nodes --tpu-0 ... --tpu-(N-1)) and trains with --num_slices N
  --dry_run           print the commands instead of running them
EOF
}

die() { echo "tpu_train.sh: error: $*" >&2; exit 2; }

TPU="" ZONE="" PROJECT="" ACCELERATOR="" RUNTIME="" WORKDIR="" CONFIG="configs/train.py:size=full" MESH=""
DATA="" DATA_MODE="gcsfuse" DATA_DIR="" PLAN_JSON="" SKIP_PLAN=0 DRY_RUN=0 NUM_SLICES=1
OVERRIDES=()
while (($#)); do
  case "$1" in
    --tpu) TPU="$2"; shift 2 ;;
    --zone) ZONE="$2"; shift 2 ;;
    --project) PROJECT="$2"; shift 2 ;;
    --accelerator_type) ACCELERATOR="$2"; shift 2 ;;
    --runtime_version) RUNTIME="$2"; shift 2 ;;
    --workdir) WORKDIR="$2"; shift 2 ;;
    --config) CONFIG="$2"; shift 2 ;;
    --mesh) MESH="$2"; shift 2 ;;
    --data) DATA="$2"; shift 2 ;;
    --data_mode) DATA_MODE="$2"; shift 2 ;;
    --data_dir) DATA_DIR="$2"; shift 2 ;;
    --plan_json) PLAN_JSON="$2"; shift 2 ;;
    --skip_plan) SKIP_PLAN=1; shift ;;
    --num_slices) NUM_SLICES="$2"; shift 2 ;;
    --dry_run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; OVERRIDES=("$@"); break ;;
    *) usage >&2; die "unknown flag $1" ;;
  esac
done

[[ -n "$TPU" ]] || die "--tpu is required (the TPU VM name)"
[[ -n "$ZONE" ]] || die "--zone is required (e.g. us-west4-a)"
[[ -n "$ACCELERATOR" ]] || die "--accelerator_type is required (e.g. v5litepod-8)"
[[ "$WORKDIR" == gs://* ]] || die "--workdir must be a gs:// folder (workers share it), got '${WORKDIR}'"
[[ "$DATA" == gs://* ]] || die "--data must be the gs:// location of the ArrayRecord datasets, got '${DATA}'"
[[ "$DATA_MODE" == gcsfuse || "$DATA_MODE" == copy ]] || die "--data_mode must be gcsfuse or copy, got '${DATA_MODE}'"
[[ -z "$PLAN_JSON" || -f "$PLAN_JSON" ]] || die "--plan_json ${PLAN_JSON} does not exist"
[[ "$NUM_SLICES" =~ ^[1-9][0-9]*$ ]] || die "--num_slices must be a positive integer, got '${NUM_SLICES}'"

if [[ -z "$RUNTIME" ]]; then
  case "$ACCELERATOR" in
    v4-*) RUNTIME="tpu-ubuntu2204-base" ;;
    v5litepod-*|v5e-*) RUNTIME="v2-alpha-tpuv5-lite" ;;
    v5p-*) RUNTIME="v2-alpha-tpuv5" ;;
    v6e-*) RUNTIME="v2-alpha-tpuv6e" ;;
    *) die "no default --runtime_version for ${ACCELERATOR}; pass one" ;;
  esac
fi

BUCKET_PATH="${DATA#gs://}"
BUCKET="${BUCKET_PATH%%/*}"
if [[ -z "$DATA_DIR" ]]; then
  if [[ "$DATA_MODE" == gcsfuse ]]; then DATA_DIR="/mnt/gcs/${BUCKET_PATH}"; else DATA_DIR="/tmp/mvrag_data"; fi
fi

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$REPO/.venv/bin/python}"
[[ -x "$PYTHON" ]] || PYTHON="python3"
REMOTE_DIR="mvrag"  # under the worker's home
CODE_TGZ="${TMPDIR:-/tmp}/mvrag_code_$$.tgz"

GCLOUD_FLAGS=(--zone "$ZONE")
[[ -n "$PROJECT" ]] && GCLOUD_FLAGS+=(--project "$PROJECT")

quote() {  # shell-quote each argument for display: plain words as they are, others in single quotes
  local out="" a q="'"
  for a in "$@"; do
    if [[ "$a" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then out+="$a "; else out+="'${a//$q/$q\\$q$q}' "; fi
  done
  echo "${out% }"
}

# Run a command (an argv), or print it with --dry_run.
run() {
  if ((DRY_RUN)); then echo "+ $(quote "$@")"; else "$@"; fi
}

# The TPU VMs: one named --tpu, or the N nodes TPU-0 .. TPU-(N-1) of a multislice queued resource.
NODES=("$TPU")
if ((NUM_SLICES > 1)); then NODES=(); for ((i = 0; i < NUM_SLICES; i++)); do NODES+=("${TPU}-${i}"); done; fi

on_workers() {  # on_workers COMMAND_STRING: run a shell command on every worker of every slice
  local node
  for node in "${NODES[@]}"; do
    run gcloud compute tpus tpu-vm ssh "$node" "${GCLOUD_FLAGS[@]}" --worker=all --command "$1"
  done
}

# ---- 1. the plan: refuse a config that will not fit the chip's HBM -----------------------------------------------
PLAN_CMD=("$PYTHON" -m mvrag_jax plan --config "$CONFIG" --topology "$ACCELERATOR" --programs train --json)
((NUM_SLICES > 1)) && PLAN_CMD+=(--num_slices "$NUM_SLICES")
[[ -n "$MESH" ]] && PLAN_CMD+=(--mesh "$MESH")
PLAN_CMD+=("${OVERRIDES[@]}")
check_plan() {  # reads one plan report (JSON, last line) on stdin; exit 3 when it does not fit
  # shellcheck disable=SC2016  # a Python program, not shell expansions
  "$PYTHON" -c '
import json, sys
report = json.loads(sys.stdin.read().strip().splitlines()[-1])
train, gib = report["programs"]["train"], 1024 ** 3
used = report.get("train_peak_gib", train["memory"]["total_bytes"] / gib)  # peak over the programs of the step
hbm = report["hbm_per_chip_bytes"] / gib
line = "plan: %s, batch %d: %.2f GiB per chip of %.0f GiB HBM" % (report["topology"], report["batch"], used, hbm)
if not report.get("train_fits", train["fits"]):
    sys.exit("tpu_train.sh: error: the train step does not fit: " + line + "; lower --config.train.batch_size, "
             "remat more (--config.runtime.remat=ordered) or use a larger slice (`mvrag plan --find_max_batch` finds "
             "the largest batch)")
print(line + ": fits")
' || exit 3
}
if ((SKIP_PLAN)); then
  echo "# plan check skipped (--skip_plan)"
elif [[ -n "$PLAN_JSON" ]]; then
  check_plan < "$PLAN_JSON"
elif ((DRY_RUN)); then
  echo "+ (cd $(quote "$REPO") && $(quote "${PLAN_CMD[@]}"))  # must report fits=true"
else
  (cd "$REPO" && "${PLAN_CMD[@]}") | check_plan
fi

# ---- 2. the TPU VM: reuse it if it exists ------------------------------------------------------------------------
QR_CREATE=(gcloud compute tpus queued-resources create "$TPU" "${GCLOUD_FLAGS[@]}" --accelerator-type "$ACCELERATOR"
  --runtime-version "$RUNTIME" --node-count "$NUM_SLICES" --node-prefix "$TPU")
QR_STATE=(gcloud compute tpus queued-resources describe "$TPU" "${GCLOUD_FLAGS[@]}" --format "value(state.state)")
if ((NUM_SLICES > 1 && DRY_RUN)); then
  echo "+ $(quote "${QR_STATE[@]}") || \\"
  echo "  $(quote "${QR_CREATE[@]}")"
  echo "+ (wait until $(quote "${QR_STATE[@]}") prints ACTIVE)"
elif ((NUM_SLICES > 1)); then  # several slices: a queued resource; it may wait for capacity
  if "${QR_STATE[@]}" > /dev/null 2>&1; then echo "reusing queued resource ${TPU}"; else "${QR_CREATE[@]}"; fi
  until [[ "$("${QR_STATE[@]}")" == ACTIVE ]]; do echo "waiting for queued resource ${TPU} to be ACTIVE"; sleep 30; done
elif ((DRY_RUN)); then
  echo "+ $(quote gcloud compute tpus tpu-vm describe "$TPU" "${GCLOUD_FLAGS[@]}") || \\"
  echo "  $(quote gcloud compute tpus tpu-vm create "$TPU" "${GCLOUD_FLAGS[@]}" --accelerator-type "$ACCELERATOR" \
    --version "$RUNTIME")"
elif gcloud compute tpus tpu-vm describe "$TPU" "${GCLOUD_FLAGS[@]}" > /dev/null 2>&1; then
  echo "reusing TPU VM ${TPU}"
else
  gcloud compute tpus tpu-vm create "$TPU" "${GCLOUD_FLAGS[@]}" --accelerator-type "$ACCELERATOR" --version "$RUNTIME"
fi

# ---- 3. code and dependencies on every worker --------------------------------------------------------------------
run tar -czf "$CODE_TGZ" -C "$REPO" --exclude=.venv --exclude=.git --exclude=out --exclude=__pycache__ \
  --exclude=.pytest_cache .
for node in "${NODES[@]}"; do
  run gcloud compute tpus tpu-vm scp "$CODE_TGZ" "${node}:~/mvrag_code.tgz" "${GCLOUD_FLAGS[@]}" --worker=all
done
on_workers "rm -rf ~/${REMOTE_DIR} && mkdir -p ~/${REMOTE_DIR} && tar -xzf ~/mvrag_code.tgz -C ~/${REMOTE_DIR}"
on_workers "cd ~/${REMOTE_DIR} && python3 -m venv .venv && .venv/bin/pip install -q --upgrade pip && \
.venv/bin/pip install -q -r requirements.txt -r requirements-tpu.txt && .venv/bin/pip install -q --no-deps -e ."

# ---- 4. data on every worker -------------------------------------------------------------------------------------
if [[ "$DATA_MODE" == gcsfuse ]]; then
  # One read-only mount per worker, as MaxText does for grain; metadata caches never expire (the data is static).
  on_workers "command -v gcsfuse >/dev/null || { \
echo \"deb https://packages.cloud.google.com/apt gcsfuse-\$(lsb_release -c -s) main\" | \
sudo tee /etc/apt/sources.list.d/gcsfuse.list && \
curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo apt-key add - && \
sudo apt-get update -q && sudo apt-get install -y -q gcsfuse; } && \
sudo mkdir -p /mnt/gcs/${BUCKET} && sudo chown \$USER /mnt/gcs/${BUCKET} && \
{ mountpoint -q /mnt/gcs/${BUCKET} || gcsfuse -o ro --implicit-dirs --type-cache-max-size-mb=-1 \
--stat-cache-max-size-mb=-1 --kernel-list-cache-ttl-secs=-1 --metadata-cache-ttl-secs=-1 ${BUCKET} /mnt/gcs/${BUCKET}; }"
else
  on_workers "mkdir -p ${DATA_DIR} && gcloud storage cp -r ${DATA}/* ${DATA_DIR}/"
fi

# ---- 5. train on every worker (detached, so a dropped ssh does not stop it), then stream worker 0's log ----------
# The XLA cache in the workdir: every worker, and every restart after a preemption, loads the compiled step instead of
# compiling it again (minutes at full size).
TRAIN_ARGS="$(quote --config "$CONFIG" --workdir "$WORKDIR" --multihost "--config.data.data_dir=${DATA_DIR}" \
  --compile_cache_dir "${WORKDIR}/xla_cache" "${OVERRIDES[@]}")"
((NUM_SLICES > 1)) && TRAIN_ARGS="--num_slices ${NUM_SLICES} ${TRAIN_ARGS}"
on_workers "cd ~/${REMOTE_DIR} && nohup .venv/bin/mvrag train ${TRAIN_ARGS} > ~/mvrag_train.log 2>&1 &"
run rm -f "$CODE_TGZ"
run gcloud compute tpus tpu-vm ssh "${NODES[0]}" "${GCLOUD_FLAGS[@]}" --worker=0 --command "tail -F ~/mvrag_train.log"
