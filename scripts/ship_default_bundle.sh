#!/usr/bin/env bash
# Rebuild the default bundle shipped inside the package (runtime/assets/default_bundle/) from the trained
# BitLinear checkpoint of configs/sbi_bit_tiny.yaml (made by benchmarks/training/run_recipe.sh).
# Ternary, ONNX Runtime (target ort: int8-exact lowering, 2-bit weights), verified on 256 real face crops.
set -euo pipefail
cd "$(dirname "$0")/.."
CKPT=${1:-runs/sbi_bit_tiny/model}
CROPS=${2:-runs/crops/faces112}
rm -rf runtime/assets/default_bundle.new
edgedf export "$CKPT" --target ort --data "$CROPS" --verify-n 256 --out runtime/assets/default_bundle.new \
    --note "Trained BitLinear (ternary) ViT, 192 wide, 4 blocks, conv stem, 112 px, on self-blended pseudo-fakes of ~9.5k real faces (UTKFace + FFHQ: non-commercial licences) for 1630 steps on a 2-core CPU (configs/sbi_bit_tiny.yaml)." \
    --note "Held-out pseudo-fake AUC 0.957, but it does NOT transfer to the real deepfake dev sets (StyleGAN 0.34, CIPLAB splices 0.50, GHOST 0.40 AUC): a demonstration of the pipeline, not a deepfake detector to rely on. See MODEL_CARD.md."
rm -rf runtime/assets/default_bundle
mv runtime/assets/default_bundle.new runtime/assets/default_bundle
