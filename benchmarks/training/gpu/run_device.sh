#!/usr/bin/env bash
# The shipped recipe's teacher and student on one GPU, from a pack made by pack.py, in a fixed time:
#   PACK=gpu_pack.tar.gz OUT=runs/gpu_out bash benchmarks/training/gpu/run_device.sh
# configs/detector_teacher.yaml then configs/detector_bit.yaml, each with the GPU overrides below (batch
# 128, LR scaled by sqrt(2), EMA 0.998 (EMA=), warm-up 20 steps (WARMUP=), cosine over wall-clock minutes,
# 2 fewer DataLoader workers than cores; STUDENT_MIN=0 trains the teacher only). Works without installing
# edgedf: the package is laid out under a temporary folder (python -P: the checkout's edgedf/ not first).
# Writes to $OUT: teacher.tar (best/), student_best.tar, student_model.tar, logs.tar (metrics, configs, logs).
set -uo pipefail
PACK=${PACK:-gpu_pack.tar.gz}
OUT=${OUT:-runs/gpu_out}
RUNS=${RUNS:-runs}
TEACHER_MIN=${TEACHER_MIN:-3}
STUDENT_MIN=${STUDENT_MIN:-4}
WORKERS=${WORKERS:-$(($(nproc) - 2))}
DEVICE=${DEVICE:-auto}
PY=${PY:-python3}
mkdir -p "$OUT" "$RUNS"
if [[ $PACK == *.tar.gz ]]; then
    tar -C "$RUNS" -xzf "$PACK" && PACK=$RUNS/$(basename "$PACK" .tar.gz) || exit 1
fi

pkg=$(mktemp -d)
cp -r edgedf "$pkg/edgedf"
for d in train export runtime devices; do ln -s "$PWD/$d" "$pkg/edgedf/$d"; done
export PYTHONPATH=$pkg PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; nproc
  "$PY" -c 'import torch; print("torch", torch.__version__, torch.cuda.is_available())'; } 2>&1 | tee "$OUT/env.txt"

common=(crops="$PACK/faces128" "labeled_crops=[$PACK/dfdc128, $PACK/ffpp128]" workers="$WORKERS" threads=4
        batch_size=128 ema="${EMA:-0.998}" warmup_steps="${WARMUP:-20}" schedule=time max_steps=10000000
        eval_every=500 ckpt_every=2000 log_every=50 device="$DEVICE" --no-progress)
mkdir -p "$RUNS/gpu_teacher"
cp "$PACK/efficientnet_lite0.safetensors" "$RUNS/gpu_teacher/"  # what init: efficientnet-lite0 reads
"$PY" -P -m edgedf train configs/detector_teacher.yaml out="$RUNS/gpu_teacher" max_minutes="$TEACHER_MIN" \
    lr=4.2e-4 "${common[@]}" 2>&1 | tee "$OUT/teacher.log"
[[ $STUDENT_MIN == 0 ]] || "$PY" -P -m edgedf train configs/detector_bit.yaml out="$RUNS/gpu_student" max_minutes="$STUDENT_MIN" \
    init="$PACK/detector_fp" teacher="$RUNS/gpu_teacher/best" lr=7e-4 "${common[@]}" 2>&1 | tee "$OUT/student.log"

tar -C "$RUNS" -cf "$OUT/teacher.tar" gpu_teacher/best
tar -C "$RUNS" -cf "$OUT/logs.tar" gpu_teacher/metrics.jsonl gpu_teacher/config.yaml
if [[ $STUDENT_MIN != 0 ]]; then
    tar -C "$RUNS" -cf "$OUT/student_best.tar" gpu_student/best  # one file each: 16 MiB at most come back
    tar -C "$RUNS" -cf "$OUT/student_model.tar" gpu_student/model
    tar -C "$RUNS" -rf "$OUT/logs.tar" gpu_student/metrics.jsonl gpu_student/config.yaml
fi
ls -la "$OUT"
