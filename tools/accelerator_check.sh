#!/usr/bin/env bash
# One-shot figures on a lent GPU or TPU VM (under 10 minutes at full size on an H100/H200), into ONE `bench all` JSON:
#   sample     full-size whole samples: bf16, 256 px, 4 views, 50 + 10 DDIM steps, CFG, random weights; 1 object
#              per call and larger batches (the best is the lowest per_object_s; goal <= 0.8 s per object)
#   train      full-size train step: --find_max_batch (largest batch that runs, its objects/s)
#   attention  each attention kernel this backend runs (cudnn on GPU, pallas_tpu on TPU, chunked) against xla at
#              the full-size attention shapes, fp32 and bf16 (a kernel out of tolerance fails the run)
#   unet       the UNet forward / forward+backward timings of the same config
#
#   tools/accelerator_check.sh                       # on the accelerator machine, from the repository root
#   tools/accelerator_check.sh --out /tmp/acc.json --objects 1,8,16,32
#   tools/accelerator_check.sh --smoke --dry_run     # print the commands only
#   tools/accelerator_check.sh --smoke               # the same run on CPU with the tiny config (minutes; a check)
#
# Needs JAX for the accelerator: pip install -r requirements.txt -r requirements-gpu.txt (or requirements-tpu.txt).
# No weights or data: every model has random weights of the config's sizes (timings do not depend on the values).
# Then `mvrag bench compare bench_cpu.json OUT.json` for ratios, and README "Accelerator figures" for the record.
# Exit status: that of `mvrag bench all` (1 when a benchmark failed; the file is written either way); 2 bad flags.
set -euo pipefail

usage() {
  sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
  cat <<'EOF'
flags: [--out FILE] [--objects N,N,...] [--steps N] [--timeout_s S] [--smoke] [--dry_run] [--python PY]
  --out        the bench all JSON (default out/accelerator_check.json)
  --objects    objects per sample call, one run each (default 1,4,8,16; smoke 1,2)
  --steps      timed calls per benchmark after its compile (default 3; smoke 1)
  --timeout_s  the whole run is stopped after this long (default 570: inside a 10-minute device lease)
  --smoke      tiny config, few steps, no --find_max_batch: proves the script on a CPU machine
  --dry_run    print the command instead of running it
  --python     interpreter (default .venv/bin/python, else python3)
EOF
}

die() { echo "accelerator_check.sh: error: $*" >&2; exit 2; }

OUT="out/accelerator_check.json" OBJECTS="" STEPS="" TIMEOUT_S=570 SMOKE=0 DRY_RUN=0 PYTHON=""
while (($#)); do
  case "$1" in
    --out) OUT="$2"; shift 2 ;;
    --objects) OBJECTS="$2"; shift 2 ;;
    --steps) STEPS="$2"; shift 2 ;;
    --timeout_s) TIMEOUT_S="$2"; shift 2 ;;
    --smoke) SMOKE=1; shift ;;
    --dry_run) DRY_RUN=1; shift ;;
    --python) PYTHON="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown flag $1" ;;
  esac
done

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "$PYTHON" ]]; then
  PYTHON="$REPO/.venv/bin/python"
  [[ -x "$PYTHON" ]] || PYTHON="python3"
fi
[[ "$TIMEOUT_S" =~ ^[1-9][0-9]*$ ]] || die "--timeout_s must be a positive number of seconds, got '${TIMEOUT_S}'"

if ((SMOKE)); then
  # configs/train.py:size=tiny carries the tiny model, its runtime and a train block: every benchmark runs from it
  CONFIG=(--config configs/train.py:size=tiny)
  OBJECTS="${OBJECTS:-1,2}" STEPS="${STEPS:-1}" SAMPLE_STEPS=2 PRIOR_STEPS=1 EXTRA=()
else
  # The full-size train config: bf16 compute, the SD2.1 multiview UNet + ViT-H/14; default matmul precision (the
  # accelerator's bf16 passes), as generation runs in practice.
  CONFIG=(--config configs/train.py:size=full --config.runtime.dtype=bfloat16
          --config.runtime.matmul_precision=default)
  OBJECTS="${OBJECTS:-1,4,8,16}" STEPS="${STEPS:-3}" SAMPLE_STEPS=50 PRIOR_STEPS=10 EXTRA=(--find_max_batch)
fi
[[ "$OBJECTS" =~ ^[1-9][0-9]*(,[1-9][0-9]*)*$ ]] || die "--objects must be counts like 1,4,8, got '${OBJECTS}'"
[[ "$STEPS" =~ ^[1-9][0-9]*$ ]] || die "--steps must be a positive integer, got '${STEPS}'"

CMD=(timeout --signal=TERM --kill-after=20 "$TIMEOUT_S" "$PYTHON" -m mvrag_jax bench all "${CONFIG[@]}"
     --out "$OUT" --objects "$OBJECTS" --steps "$STEPS" --sample_steps "$SAMPLE_STEPS" --prior_steps "$PRIOR_STEPS"
     "${EXTRA[@]}" --compile_cache_dir none
     sample train attention unet)

if ((DRY_RUN)); then
  line="+ cd ${REPO} &&"
  for a in "${CMD[@]}"; do
    if [[ "$a" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then line+=" $a"; else line+=" '${a}'"; fi
  done
  echo "$line"
  exit 0
fi
cd "$REPO"
mkdir -p "$(dirname "$OUT")"
if command -v nvidia-smi > /dev/null; then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; fi
echo "accelerator_check: $(date -u +%FT%TZ) $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
status=0
"${CMD[@]}" || status=$?
if ((status == 124)); then echo "accelerator_check.sh: stopped after ${TIMEOUT_S} s (--timeout_s)" >&2; fi
# The figures that answer the goals, from the file (when it was written).
[[ -f "$OUT" ]] && "$PYTHON" - "$OUT" <<'EOF'
import json, sys
report = json.load(open(sys.argv[1]))
b = report["benchmarks"]
print(f"machine: {report['machine']['backend']} {report['machine']['device_kind']} x {report['machine']['device_count']}")
sample = b.get("sample", {})
if "runs" in sample:
    best = min(sample["runs"], key=lambda r: r["per_object_s"])
    one = next(r for r in sample["runs"] if r["objects"] == min(x["objects"] for x in sample["runs"]))
    print(f"sample: {one['per_object_s']:.3f} s per object at {one['objects']} per call; best "
          f"{best['per_object_s']:.3f} s per object at {best['objects']} per call (goal <= 0.8 s on H100/H200)")
train = b.get("train", {})
if "max_batch" in train:
    print(f"train: largest batch {train['max_batch']}: {json.dumps(train.get('figures'))[:300]}")
elif "error" not in train and train:
    print(f"train: {json.dumps(train)[:300]}")
attention = b.get("attention", {})
if "cases" in attention:
    print(f"attention: {'all within tolerance' if attention['ok'] else 'OUT OF TOLERANCE'}; kernels "
          f"{sorted({c['kernel'] for c in attention['cases']})}, skipped {attention['skipped']}")
for name, figures in b.items():
    if "error" in figures:
        print(f"{name}: FAILED: {figures['error'][:300]}")
EOF
exit "$status"
