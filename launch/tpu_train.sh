#!/usr/bin/env bash
# Train MV-RAG on a Cloud TPU VM slice: check the plan, create or reuse the TPU, copy the code, install, start
# `mvrag train` on every worker, stream worker 0's log.
#
#   launch/tpu_train.sh --tpu mvrag-v5e --zone us-west4-a --project my-proj --accelerator_type v5litepod-8 \
#       --workdir gs://my-bucket/runs/r1 --data gs://my-bucket/mvrag_data --data_mode gcsfuse \
#       --config configs/train.py:size=full -- --config.train.init=/ckpt/mvrag --config.train.batch_size=24
#
# Everything after `--` is passed to both `mvrag plan` and `mvrag train` (config overrides). Flags take dashes or
# underscores (--dry-run, --dry_run). --dry_run prints every command instead of running it. Before touching the cloud, `mvrag plan` compiles the train
# step for the accelerator type (libtpu, no TPU needed; see requirements-tpu.txt) and a config that does not fit the
# chip's HBM is refused. --plan_json FILE uses a saved plan report (`mvrag plan --json` output) instead.
#
# --supervise keeps the run going through preemptions (spot VMs: --spot; queued resources: --queued_resource): every
# --poll_s seconds it asks for the VM's state and each worker's trainer. A preempted, failed or missing VM is deleted
# and created again, set up again, and `mvrag train` started on every worker; a trainer gone, failed or preempted on
# any worker is stopped on all (SIGTERM: a live one saves) and started again. Each start resumes from the latest
# checkpoint in the gs:// workdir. Two trainers on one workdir are refused by the trainer's workdir lock, so a
# supervisor that restarts while an old trainer still runs cannot double it. It returns 0 once the trainer on every
# worker exits 0 without being preempted (train.steps reached), and 2 after --max_failures failed starts in a row.
#
# --num_slices N (multislice over DCN): one queued resource --tpu of N slices (`--node-count N`, nodes --tpu-0 ...
# --tpu-(N-1)); the runtime gives every worker its MEGASCALE_* environment, the plan compiles for N slices, and
# `mvrag train --num_slices N` runs on every worker of every node. Preempting one slice stops the whole job (the
# queued resource is one unit): --supervise recreates it and every trainer resumes from the workdir.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: launch/tpu_train.sh --tpu NAME --zone ZONE --accelerator_type TYPE --workdir gs://... --data gs://...
                           [--project P] [--runtime_version V] [--config FILE[:ARGS]] [--mesh data=1,fsdp=8]
                           [--data_mode gcsfuse|copy] [--data_dir DIR] [--plan_json FILE] [--skip_plan]
                           [--spot | --queued_resource] [--supervise [--poll_s 300] [--max_failures 3]]
                           [--num_slices N] [--dry_run] [-- CONFIG_OVERRIDES...]
  Multi-word flags take dashes or underscores (--dry-run = --dry_run).
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
  --spot              create a spot TPU VM (preemptible; use with --supervise)
  --queued_resource   create the TPU through a queued resource (spot), waiting until it is granted
  --supervise         watch the VM and the trainers; recreate, set up and restart after a preemption or failure
  --poll_s            seconds between supervisor polls (default 300)
  --max_failures      stop supervising after this many failed (non-zero) trainer starts in a row (default 3)
  --num_slices        slices of --accelerator_type joined over DCN (default 1); N > 1 creates the queued resource
                      --tpu with --node-count N (nodes --tpu-0 ... --tpu-(N-1); spot with --spot or
                      --queued_resource) and trains with --num_slices N
  --dry_run           print the commands instead of running them (with --supervise: the launch, then every
                      command of one preempt-and-resume cycle)
EOF
}

die() { echo "tpu_train.sh: error: $*" >&2; exit 2; }

TPU="" ZONE="" PROJECT="" ACCELERATOR="" RUNTIME="" WORKDIR="" CONFIG="configs/train.py:size=full" MESH=""
DATA="" DATA_MODE="gcsfuse" DATA_DIR="" PLAN_JSON="" SKIP_PLAN=0 DRY_RUN=0
SPOT=0 QUEUED=0 SUPERVISE=0 POLL_S=300 MAX_FAILURES=3 NUM_SLICES=1
OVERRIDES=()
while (($#)); do
  flag="$1"
  if [[ "$flag" == --?*-* ]]; then  # --dry-run -> --dry_run (not the `--` separator, not the values)
    flag="--$(tr - _ <<< "${flag#--}")"
  fi
  case "$flag" in
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
    --dry_run) DRY_RUN=1; shift ;;
    --spot) SPOT=1; shift ;;
    --queued_resource) QUEUED=1; shift ;;
    --supervise) SUPERVISE=1; shift ;;
    --poll_s) POLL_S="$2"; shift 2 ;;
    --max_failures) MAX_FAILURES="$2"; shift 2 ;;
    --num_slices) NUM_SLICES="$2"; shift 2 ;;
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
[[ "$POLL_S" =~ ^[0-9]+$ ]] || die "--poll_s must be a whole number of seconds, got '${POLL_S}'"
[[ "$MAX_FAILURES" =~ ^[1-9][0-9]*$ ]] || die "--max_failures must be a positive count, got '${MAX_FAILURES}'"
[[ "$NUM_SLICES" =~ ^[1-9][0-9]*$ ]] || die "--num_slices must be a positive integer, got '${NUM_SLICES}'"
if ((SPOT && QUEUED)); then die "--spot and --queued_resource exclude each other (a queued resource here is always spot)"; fi

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

# The TPU VMs: the one named --tpu, or the N nodes TPU-0 .. TPU-(N-1) of a multislice queued resource.
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

# ---- 2. the TPU VM --------------------------------------------------------------------------------------------------
CREATE_CMD=(gcloud compute tpus tpu-vm create "$TPU" "${GCLOUD_FLAGS[@]}" --accelerator-type "$ACCELERATOR"
            --version "$RUNTIME")
((SPOT)) && CREATE_CMD+=(--spot)
DELETE_CMD=(gcloud compute tpus tpu-vm delete "$TPU" "${GCLOUD_FLAGS[@]}" --quiet)
STATE_CMD=(gcloud compute tpus tpu-vm describe "$TPU" "${GCLOUD_FLAGS[@]}" --format "value(state)")
if ((QUEUED)); then  # the queued resource owns the VM (node id = --tpu); its state says whether the VM exists
  CREATE_CMD=(gcloud compute tpus queued-resources create "$TPU" "${GCLOUD_FLAGS[@]}" --node-id "$TPU"
              --accelerator-type "$ACCELERATOR" --runtime-version "$RUNTIME" --spot)
  DELETE_CMD=(gcloud compute tpus queued-resources delete "$TPU" "${GCLOUD_FLAGS[@]}" --force --quiet)
  STATE_CMD=(gcloud compute tpus queued-resources describe "$TPU" "${GCLOUD_FLAGS[@]}" --format "value(state.state)")
fi
if ((NUM_SLICES > 1)); then  # several slices: one queued resource of N nodes, the unit that is granted and preempted
  CREATE_CMD=(gcloud compute tpus queued-resources create "$TPU" "${GCLOUD_FLAGS[@]}" --node-count "$NUM_SLICES"
              --node-prefix "$TPU" --accelerator-type "$ACCELERATOR" --runtime-version "$RUNTIME")
  ((SPOT || QUEUED)) && CREATE_CMD+=(--spot)
  DELETE_CMD=(gcloud compute tpus queued-resources delete "$TPU" "${GCLOUD_FLAGS[@]}" --force --quiet)
  STATE_CMD=(gcloud compute tpus queued-resources describe "$TPU" "${GCLOUD_FLAGS[@]}" --format "value(state.state)")
fi

vm_state() {  # READY, WAIT (being made or repaired), GONE (absent, preempted, failed: delete and create again)
  local state
  state="$("${STATE_CMD[@]}" 2> /dev/null)" || { echo GONE; return; }
  case "$state" in
    READY|ACTIVE) echo READY ;;
    CREATING|STARTING|RESTARTING|REPAIRING|PROVISIONING|ACCEPTED|WAITING_FOR_RESOURCES) echo WAIT ;;
    *) echo GONE ;;  # PREEMPTED, TERMINATED, STOPPED, FAILED, SUSPENDED, ...
  esac
}

# ---- 3. code, dependencies and data on every worker --------------------------------------------------------------
setup_workers() {
  run tar -czf "$CODE_TGZ" -C "$REPO" --exclude=.venv --exclude=.git --exclude=out --exclude=__pycache__ \
    --exclude=.pytest_cache .
  local node
  for node in "${NODES[@]}"; do
    run gcloud compute tpus tpu-vm scp "$CODE_TGZ" "${node}:~/mvrag_code.tgz" "${GCLOUD_FLAGS[@]}" --worker=all
  done
  on_workers "rm -rf ~/${REMOTE_DIR} && mkdir -p ~/${REMOTE_DIR} && tar -xzf ~/mvrag_code.tgz -C ~/${REMOTE_DIR}"
  on_workers "cd ~/${REMOTE_DIR} && python3 -m venv .venv && .venv/bin/pip install -q --upgrade pip && \
.venv/bin/pip install -q -r requirements.txt -r requirements-tpu.txt && .venv/bin/pip install -q --no-deps -e ."
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
}

# ---- 4. the trainer on every worker --------------------------------------------------------------------------------
# Detached in its own session (setsid), so a dropped ssh does not stop it and `stop_train` can signal its whole
# process group. On each worker: ~/mvrag_train.pid (the session), ~/mvrag_train.log (stderr, appended across
# restarts), ~/mvrag_train.json (the summary line `mvrag train` prints last), ~/mvrag_train.rc (its exit status).
# The XLA cache in the workdir: every worker, and every restart after a preemption, loads the compiled step instead of
# compiling it again (minutes at full size).
TRAIN_ARGS="$(quote --config "$CONFIG" --workdir "$WORKDIR" --multihost "--config.data.data_dir=${DATA_DIR}" \
  --compile_cache_dir "${WORKDIR}/xla_cache" "${OVERRIDES[@]}")"
((NUM_SLICES > 1)) && TRAIN_ARGS="--num_slices ${NUM_SLICES} ${TRAIN_ARGS}"
TRAIN_JOB="echo \$\$ > ~/mvrag_train.pid; cd ~/${REMOTE_DIR} && .venv/bin/mvrag train ${TRAIN_ARGS} \
> ~/mvrag_train.json 2>> ~/mvrag_train.log; echo \$? > ~/mvrag_train.rc"
start_train() {
  on_workers "rm -f ~/mvrag_train.rc ~/mvrag_train.json && setsid nohup bash -c $(quote "$TRAIN_JOB") \
> /dev/null 2>&1 < /dev/null &"
}
stop_train() {  # SIGTERM (a live trainer finishes its step and saves), then wait up to 10 min for it to leave
  on_workers "if [ -f ~/mvrag_train.pid ] && kill -0 -- -\$(cat ~/mvrag_train.pid) 2>/dev/null; then \
kill -TERM -- -\$(cat ~/mvrag_train.pid); for i in \$(seq 120); do kill -0 -- -\$(cat ~/mvrag_train.pid) 2>/dev/null \
|| break; sleep 5; done; fi; true"
}
# One line per worker: "mvrag-status running", "mvrag-status gone" or "mvrag-status exited RC SUMMARY_JSON".
STATUS_CMD="if [ -f ~/mvrag_train.rc ]; then echo \"mvrag-status exited \$(cat ~/mvrag_train.rc) \
\$(tail -n 1 ~/mvrag_train.json 2>/dev/null)\"; elif [ -f ~/mvrag_train.pid ] && \
kill -0 -- -\$(cat ~/mvrag_train.pid) 2>/dev/null; then echo 'mvrag-status running'; else echo 'mvrag-status gone'; fi"
trainer_status() {  # RUNNING (on every worker), DONE (train.steps reached everywhere), FAILED, or RESTART
  local lines="" node answer
  for node in "${NODES[@]}"; do
    answer="$(gcloud compute tpus tpu-vm ssh "$node" "${GCLOUD_FLAGS[@]}" --worker=all --command "$STATUS_CMD" \
      2>/dev/null | grep '^mvrag-status ')" || { echo RESTART; return; }  # no worker of this node answered
    lines+="${answer}"$'\n'
  done
  lines="${lines%$'\n'}"
  if ! grep -qv '^mvrag-status running$' <<< "$lines"; then echo RUNNING
  elif grep -q '^mvrag-status exited [1-9]' <<< "$lines"; then echo FAILED
  elif ! grep -qv '^mvrag-status exited 0 .*"preempted": false' <<< "$lines"; then echo DONE
  else echo RESTART; fi  # gone (VM rebooted), or preempted (SIGTERM: it saved and exited 0)
}

# ---- 5. launch, then stream worker 0's log or supervise -------------------------------------------------------------
LOG_CMD=(gcloud compute tpus tpu-vm ssh "${NODES[0]}" "${GCLOUD_FLAGS[@]}" --worker=0 --command "tail -F ~/mvrag_train.log")
trap 'rm -f "$CODE_TGZ"' EXIT

if ((DRY_RUN)); then
  echo "+ $(quote "${STATE_CMD[@]}")  # READY: reuse the VM; anything else: create it"
  run "${CREATE_CMD[@]}"
  setup_workers
  start_train
  if ! ((SUPERVISE)); then run "${LOG_CMD[@]}"; exit 0; fi
  echo "# ---- supervise: every ${POLL_S} s, one preempt-and-resume cycle"
  echo "+ $(quote "${STATE_CMD[@]}")"
  echo "# VM preempted, failed or absent: delete it, create it again, set it up, start the trainers (they resume"
  echo "# from the latest checkpoint in ${WORKDIR})"
  run "${DELETE_CMD[@]}"
  run "${CREATE_CMD[@]}"
  setup_workers
  start_train
  echo "# VM being made or repaired: wait. VM ready: ask every worker for its trainer"
  for node in "${NODES[@]}"; do
    run gcloud compute tpus tpu-vm ssh "$node" "${GCLOUD_FLAGS[@]}" --worker=all --command "$STATUS_CMD"
  done
  echo "# a trainer gone or preempted on any worker: stop the rest (SIGTERM: they save), start all again"
  stop_train
  start_train
  echo "# every trainer exited 0, not preempted: done (exit 0); ${MAX_FAILURES} failed starts in a row: exit 2"
  exit 0
fi

state="$(vm_state)"
if [[ "$state" == READY ]]; then
  echo "reusing TPU VM ${TPU}"
  status="$(trainer_status)"
  if [[ "$status" == RUNNING ]]; then
    ((SUPERVISE)) || die "a trainer already runs on ${TPU}; watch it with --supervise, or stop it first"
    echo "a trainer already runs on ${TPU}: supervising it"
  else
    setup_workers
    start_train
  fi
else
  if [[ "$state" == GONE ]]; then "${DELETE_CMD[@]}" > /dev/null 2>&1 || true; "${CREATE_CMD[@]}"; fi
  until [[ "$(vm_state)" == READY ]]; do sleep "$POLL_S"; done
  setup_workers
  start_train
fi
if ! ((SUPERVISE)); then "${LOG_CMD[@]}"; exit 0; fi

failures=0
while true; do
  sleep "$POLL_S"
  state="$(vm_state)"
  if [[ "$state" == WAIT ]]; then echo "supervise: ${TPU} is being made or repaired; waiting"; continue; fi
  if [[ "$state" == GONE ]]; then
    echo "supervise: ${TPU} was preempted or is gone; creating it again"
    "${DELETE_CMD[@]}" > /dev/null 2>&1 || true
    "${CREATE_CMD[@]}"
    until [[ "$(vm_state)" == READY ]]; do sleep "$POLL_S"; done
    setup_workers
    start_train
    continue
  fi
  case "$(trainer_status)" in
    RUNNING) failures=0 ;;
    DONE) echo "supervise: every worker's trainer finished (train.steps reached)"; exit 0 ;;
    FAILED)
      failures=$((failures + 1))
      ((failures < MAX_FAILURES)) || die "the trainer failed ${failures} times in a row; see ~/mvrag_train.log on the workers"
      echo "supervise: a trainer failed (${failures} of ${MAX_FAILURES}); restarting on every worker"
      stop_train
      start_train ;;
    RESTART)
      echo "supervise: a trainer was preempted or is gone; restarting on every worker (it resumes from ${WORKDIR})"
      stop_train
      start_train ;;
  esac
done
