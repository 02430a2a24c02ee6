import torch

from edgedf.train.smoke import perturb
from edgedf.train.vit import ViTConfig, build_model

TINY = dict(preset=None, img_size=32, patch_size=8, dim=32, depth=2, heads=2)


def tiny_model(variant: str = "fp", seed: int = 0, **kw):
    """A random tiny ViT with random biases and norm weights and p(fake) spread over (0, 1) (train.smoke.perturb):
    parity is measured on decisive outputs, as with a trained model, and a dropped bias shows."""
    torch.manual_seed(seed)
    return perturb(build_model(ViTConfig(**{**TINY, "variant": variant, **kw})), seed).eval()
