"""edgedf.train: BitLinear, the ViT, checkpoints, datasets and the training loop (needs torch)."""
