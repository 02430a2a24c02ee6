"""`edgedf train [CONFIG.yaml] [key=value ...]`: the training entry point (also under torchrun)."""

from __future__ import annotations

import os
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    from edgedf.cli import cli_errors, console

    @app.command("train", context_settings={"allow_extra_args": False})
    @cli_errors
    def train_cmd(
        args: list[str] | None = typer.Argument(
            None, help="An optional YAML config (configs/*.yaml), then key=value overrides (lr=1e-3 model.depth=6)."
        ),
        out: str | None = typer.Option(None, "--out", "-o", help="Run folder (resumes if it has last/)."),
        task: str | None = typer.Option(None, "--task", help="detect | pretrain"),
        variant: str | None = typer.Option(None, "--variant", help="fp | bit"),
        crops: str | None = typer.Option(None, "--crops", help="detect: crops folder from edgedf prepare."),
        imagenet: str | None = typer.Option(None, "--imagenet", help="pretrain: folder with train/ and val/."),
        init: str | None = typer.Option(
            None, "--init", help="Start from a full-precision checkpoint or a timm/DeiT .safetensors file."
        ),
        teacher: str | None = typer.Option(None, "--teacher", help="Distil from this full-precision checkpoint."),
        qat: bool = typer.Option(False, "--qat", help="int8 fake-quant fine-tuning (fp model; use with --init)."),
        max_steps: int | None = typer.Option(None, "--max-steps"),
        max_minutes: float | None = typer.Option(None, "--max-minutes", help="Stop (with a checkpoint) after this."),
        batch_size: int | None = typer.Option(None, "--batch-size"),
        lr: float | None = typer.Option(None, "--lr"),
        workers: int | None = typer.Option(None, "--workers"),
        seed: int | None = typer.Option(None, "--seed"),
        no_progress: bool = typer.Option(False, "--no-progress", help="Log lines instead of a progress bar."),
    ) -> None:
        """Train a full-precision or BitLinear ViT: pseudo-fakes or real/fake crops, or N-class pretraining.

        Under `torchrun --nproc_per_node N -m edgedf train ...` it runs DDP (gloo on CPU, NCCL on GPU).
        """
        from edgedf.runtime.errors import EdgedfError
        from edgedf.train.config import load_config

        args = list(args or [])
        configs = [a for a in args if "=" not in a]
        if len(configs) > 1:
            raise EdgedfError(f"one config file at most, got {', '.join(configs)} (overrides are key=value)")
        config = Path(configs[0]) if configs else None
        ov = [a for a in args if "=" in a]
        for key, value in (
            ("out", out),
            ("task", task),
            ("crops", crops),
            ("imagenet", imagenet),
            ("init", init),
            ("teacher", teacher),
            ("max_steps", max_steps),
            ("max_minutes", max_minutes),
            ("batch_size", batch_size),
            ("lr", lr),
            ("workers", workers),
            ("seed", seed),
        ):
            if value is not None:
                ov.append(f"{key}={value}")
        if variant is not None:
            ov.append(f"model.variant={variant}")
        if qat:
            ov.append("qat=true")
        if no_progress:
            ov.append("progress=false")
        cfg = load_config(config, ov)

        from edgedf.train.loop import train

        result = train(cfg)
        shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in result.items()}
        if int(os.environ.get("RANK") or 0) == 0:
            console.print(f"done: {shown}; model in {cfg.out}/model", highlight=False)
