import torch

from edgedf.train.vit import ViTConfig, build_model

TINY = dict(preset=None, img_size=32, patch_size=8, dim=32, depth=2, heads=2)


def tiny_model(variant: str = "fp", seed: int = 0, **kw):
    """A random-init tiny ViT whose head is scaled up so p(fake) spreads over (0, 1): parity is then
    measured on decisive outputs, as with a trained model, not on a heap of p = 0.5 coin flips."""
    torch.manual_seed(seed)
    m = build_model(ViTConfig(**{**TINY, "variant": variant, **kw}))
    with torch.no_grad():
        m.head.weight.mul_(100.0)
    return m.eval()
