#!/usr/bin/env bash
# The CPU pseudo-fake recipe end to end: crops of the real faces, training, evaluation on the dev sets.
# Usage: bash benchmarks/training/run_recipe.sh [DATA=../shared/data]   (writes under runs/, gitignored)
set -euo pipefail
DATA=${1:-../shared/data}
cd "$(dirname "$0")/../.."

# 1. aligned 112-px crops of the ~10k real faces (runtime RetinaFace + ArcFace-5 alignment), 6 % of ids held out
edgedf prepare "$DATA/faces" --format folder --label real --val-fraction 0.06 --size 112 \
    --out runs/crops/faces112 -j 2

# 2. the dev sets, prepared with the same spec (GHOST: the real clip and its three swaps, all animated WebP)
for s in stylegan ciplab_splice; do
    edgedf prepare "$DATA/deepfakes/$s" --format folder --size 112 --out "runs/crops/dev112/$s" -j 1
done
mkdir -p runs/ghost_layout/ghost/real runs/ghost_layout/ghost/fake
ln -sf "$(realpath "$DATA/deepfakes/ghost/orig.webp")" runs/ghost_layout/ghost/real/orig.webp
for f in elon khabenskii mark; do
    ln -sf "$(realpath "$DATA/deepfakes/ghost/$f.webp")" "runs/ghost_layout/ghost/fake/$f.webp"
done
edgedf prepare runs/ghost_layout/ghost --format folder --size 112 --frames 32 --out runs/crops/dev112/ghost -j 1

# 3. training (resumes if runs/sbi_bit_tiny/last exists), niced: the machine is shared
nice -n 10 edgedf train configs/sbi_bit_tiny.yaml --no-progress

# 4. evaluation: held-out real faces are in the training log (val_auc); the dev sets here
edgedf eval runs/sbi_bit_tiny/model runs/crops/dev112/stylegan runs/crops/dev112/ciplab_splice \
    runs/crops/dev112/ghost --json benchmarks/training/eval_dev.json
cp runs/sbi_bit_tiny/metrics.jsonl runs/sbi_bit_tiny/curves.png benchmarks/training/
