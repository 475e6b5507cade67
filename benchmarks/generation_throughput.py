"""Images per second of `harness generate` against a plain loop over the same diffusers pipeline.

Both sides load the same pipeline folder, draw each image from its own CPU generator, and run
the same prompts in the same batches with the same settings; the harness also writes PNGs and
records into WebDataset shards. Rounds alternate (plain, harness, plain, ...) and the best round
of each side counts, so a busy machine hurts both alike. Pipelines:

- `--world` (default): the miniature world's pipeline, untrained (weights do not change speed);
- `--sd15-random`: a Stable Diffusion v1.5-shaped pipeline (UNet, VAE, CLIP ViT-L/14 text
  encoder at full size) with random weights, meant for a GPU;
- `--sd15-tiny`: the same builder at tiny widths (a CPU check of that code path, e.g.
  `benchmarks/gpu_check.sh --tiny`);
- `--model SOURCE`: any pipeline the harness loads (hub id, folder, zoo:NAME).

    python benchmarks/generation_throughput.py --prompts-per-digit 6 --steps 10 --batch-size 8 --threads 1
    python benchmarks/generation_throughput.py --sd15-random --accelerator gpu --dtype float16 --steps 50 \
        --batch-size 8 --prompts-per-digit 4 --height 512 --width 512
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch

from harness.generate import run as generate_stage
from harness.generate.loop import effective_seed, plan_batches
from harness.generate.run import GenerateJob
from harness.generate.suites import Suite, load_suite
from harness.models.pipelines import DTYPES, load_pipeline, resolve_dtype
from harness.runtime import RuntimeSettings
from harness.settings.generate import GenerationSettings


def sd15_random_pipeline(folder: Path, device: str, tiny: bool = False) -> None:
    """Save an SD-v1.5-shaped StableDiffusionPipeline with random weights (fp16 files); `tiny`:
    the same classes and block layout at tiny widths (64 px images, 8x8 latents), for the CPU."""
    from diffusers import (
        AutoencoderKL,
        PNDMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from tokenizers import pre_tokenizers
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    width = 768 if not tiny else 32
    with torch.device(device):
        if tiny:
            unet = UNet2DConditionModel(
                sample_size=8, block_out_channels=(32, 32, 64, 64), layers_per_block=1, cross_attention_dim=width,
                attention_head_dim=2, norm_num_groups=8,
            )
        else:  # otherwise diffusers defaults are SD v1; sample_size 64 as SD v1.5's config (512 px)
            unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=width)
        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512) if not tiny else (8, 8, 8, 8),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=2 if not tiny else 1,
            latent_channels=4,
            norm_num_groups=32 if not tiny else 4,
            sample_size=512 if not tiny else 64,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=49408,
                hidden_size=width,
                intermediate_size=3072 if not tiny else 64,
                num_hidden_layers=12 if not tiny else 1,
                num_attention_heads=12 if not tiny else 2,
                max_position_embeddings=77,
                hidden_act="quick_gelu",
                projection_dim=width,
            )
        )
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in sorted(pre_tokenizers.ByteLevel.alphabet()):  # a character-level stand-in for CLIP's BPE
        for token in (char, f"{char}</w>"):
            vocab[token] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        skip_prk_steps=True,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipeline = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.to(torch.float16).save_pretrained(folder, safe_serialization=True)


def world_pipeline(folder: Path) -> None:
    """Save an untrained miniature-world pipeline."""
    from harness.models.zoo.pipeline import build_untrained_pipeline

    build_untrained_pipeline(seed=0).save_pretrained(folder)


def plain_loop(source: str, suite: Suite, settings: GenerationSettings, device: str, dtype: torch.dtype) -> int:
    """What a user would write: load, then call the pipeline batch by batch."""
    pipeline = load_pipeline(source, device=device, dtype=dtype)
    count = 0
    shards = list(range((len(suite) + settings.shard_size - 1) // settings.shard_size))
    for ids in plan_batches(suite, settings, shards):
        records = [suite.records[i] for i in ids]
        images = pipeline(
            prompt=[r.prompt for r in records],
            height=settings.height,
            width=settings.width,
            num_inference_steps=settings.steps,
            guidance_scale=settings.guidance,
            generator=[torch.Generator("cpu").manual_seed(effective_seed(r, settings)) for r in records],
        ).images
        count += len(images)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--model", help="a pipeline the harness loads")
    which.add_argument("--sd15-random", action="store_true", help="SD-v1.5-shaped pipeline, random weights")
    which.add_argument("--sd15-tiny", action="store_true", help="the same builder at tiny widths (CPU check)")
    parser.add_argument("--prompts-per-digit", type=int, default=6, help="prompts = 10 x this (suite digits-all-N)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--height", type=int)
    parser.add_argument("--width", type=int)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--shard-size", type=int, default=100)
    parser.add_argument("--dtype", default="auto", choices=("auto", *DTYPES))
    parser.add_argument("--accelerator", default="cpu", choices=("cpu", "gpu"))
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per side; the best counts")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if args.accelerator == "gpu" else "cpu"
    settings = GenerationSettings(
        steps=args.steps,
        guidance=args.guidance,
        height=args.height,
        width=args.width,
        batch_size=args.batch_size,
        shard_size=args.shard_size,
        dtype=args.dtype,
        scheduler=None,
    )
    dtype = resolve_dtype(settings.dtype, "cuda" if args.accelerator == "gpu" else "cpu")
    suite = load_suite(f"digits-all-{args.prompts_per_digit}")
    work = Path(tempfile.mkdtemp(prefix="harness-bench-"))
    try:
        source = args.model
        if source is None:
            source = str(work / "pipeline")
            if args.sd15_random or args.sd15_tiny:
                sd15_random_pipeline(Path(source), device, tiny=args.sd15_tiny)
            else:
                world_pipeline(Path(source))
        best = {"plain loop": float("inf"), "harness": float("inf")}
        for round_index in range(args.rounds):
            start = time.perf_counter()
            assert plain_loop(source, suite, settings, device, dtype) == len(suite)
            best["plain loop"] = min(best["plain loop"], time.perf_counter() - start)
            out = work / f"out-{round_index}"
            start = time.perf_counter()
            generate_stage.run(GenerateJob(source, [], suite, settings, out, "bench",
                                           runtime=RuntimeSettings(accelerator=args.accelerator)))
            best["harness"] = min(best["harness"], time.perf_counter() - start)
            shutil.rmtree(out)
        print(
            f"\n{len(suite)} images, {args.steps} steps, batch {args.batch_size}, {dtype}, {device}, "
            f"threads {torch.get_num_threads()}, best of {args.rounds} rounds (loading included)"
        )
        print("| side | seconds | images/s | ratio |\n|---|---|---|---|")
        for side, seconds in best.items():
            ratio = best["plain loop"] / seconds
            print(f"| {side} | {seconds:.2f} | {len(suite) / seconds:.2f} | {ratio:.3f} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
