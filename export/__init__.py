"""edgedf.export: checkpoint -> canonical ternary ONNX -> per-backend bundle (needs torch, onnx)."""
