#!/usr/bin/env bash
# Rebuild the default bundle shipped inside the package (runtime/assets/default_bundle/) from the trained
# BitLinear checkpoint of configs/detector_bit.yaml (made by benchmarks/training/run_recipe.sh).
# Ternary, ONNX Runtime (target ort with the int8-exact lowering: stock ops, nothing built on the device; the target's
# default is now `native`, which the shipped bundle has not been re-made with), 2-bit weights, verified on 256 real face crops,
# decision threshold calibrated on the real crops of the DFDC and FF++ dev splits (1 % false alarms).
set -euo pipefail
cd "$(dirname "$0")/.."
CKPT=${1:-runs/detector_bit/model}
FAR=${FAR:-0.01}
rm -rf runtime/assets/default_bundle.new
edgedf export "$CKPT" --target ort --lowering int8-exact --data runs/crops/faces128 --verify-n 256 --out runtime/assets/default_bundle.new \
    --threshold-data runs/crops/dfdc128 --threshold-data runs/crops/ffpp128 --threshold-split val,test \
    --false-alarm "$FAR" \
    --note "BitLinear (ternary) hybrid ViT: EfficientNet-Lite0 stem (ImageNet), 4 ViT-Ti blocks, 128 px; trained on DFDC crops, FF++ c23 frames and self-blended real faces (configs/detector_bit.yaml); research, non-commercial terms (MODEL_CARD.md)."
rm -rf runtime/assets/default_bundle
mv runtime/assets/default_bundle.new runtime/assets/default_bundle
