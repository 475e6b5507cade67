"""ESD training steps per second on the SD-v1.5-shaped UNet, through the harness's own code.

Builds the random SD-v1.5-shaped pipeline of generation_throughput.py (`--tiny`: the same
builder at tiny widths, for a CPU check), loads it with the harness's loader in float32 and
trains ESD-x (the cross-attention `attn2` parameters) with the harness's ESD objective
(`harness.unlearn.esd`) and fine-tuning engine (`harness.train.engine.fine_tune`: Lightning,
AdamW, gradient clipping, bf16 mixed precision on a GPU that has it). Two runs:

- esd: the whole ESD step: i DDIM steps of sampling with the trained UNet and guidance (i drawn
  uniformly from 1..n-2 for n = --ddim-steps), the frozen UNet's two forward passes, the trained
  UNet's forward, the backward and the optimizer step;
- update: the same step without the sampling (z is the drawn noise itself): two frozen
  forwards, one trained forward, the backward, the optimizer step.

Each run times --steps steps after --warmup untimed ones, from the start of one step's loss to
the start of the next (CUDA synchronized there), so a step's time includes its backward, its
optimizer step and Lightning's own work. An ESD step costs more the larger its drawn i, so the
mean i of the timed steps is printed too, and the expected ESD steps/s at the mean of the
uniform draw, (n - 1) / 2, from the two runs (step = update + i x one sampling step).

    python benchmarks/esd_speed.py --device cuda [--steps 12] [--warmup 3] [--ddim-steps 50]
    python benchmarks/esd_speed.py --tiny --steps 2 --warmup 1 --ddim-steps 4 --threads 1
"""

from __future__ import annotations

import argparse
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the builder of the sibling script
from generation_throughput import sd15_random_pipeline  # noqa: E402

from harness.models.pipelines import load_pipeline  # noqa: E402
from harness.train.engine import fine_tune, precision_for  # noqa: E402
from harness.unlearn.esd import ESDObjective, ESDParams  # noqa: E402


class TimedESD(ESDObjective):
    """ESD's objective, stamping the start of every step's loss; `sample=False` skips the
    sampling of x_t (the update alone)."""

    def __init__(self, prompts: list[str], params: ESDParams, device: torch.device, sample: bool) -> None:
        super().__init__(prompts, params, params.batch_size)
        self.device, self.sample = device, sample
        self.stamps: list[float] = []
        self.drawn: list[int] = []

    def loss(self, module, generator: torch.Generator) -> torch.Tensor:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.stamps.append(time.perf_counter())
        return super().loss(module, generator)

    def _sample(self, module, z, concept, empty, steps):
        self.drawn.append(int(steps))
        return super()._sample(module, z, concept, empty, steps) if self.sample else z


def timed_run(name: str, pipeline, args: argparse.Namespace, device: torch.device, folder: Path) -> dict:
    """`args.warmup + args.steps + 1` engine steps; the middle `args.steps` are timed."""
    total = args.warmup + args.steps + 1
    params = ESDParams(steps=total, batch_size=args.batch_size, ddim_steps=args.ddim_steps, trainable="esd-x",
                       checkpoint_every=10**9, seed=0)
    objective = TimedESD([args.prompt], params, device, sample=name == "esd")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    outcome = fine_tune(pipeline, objective, params, folder / name, f"esd-speed-{name}", f"esd-speed {name}", device)
    if len(objective.stamps) != total or len(objective.drawn) != total:
        raise RuntimeError(f"{name}: expected {total} losses and samplings, got {len(objective.stamps)} and "
                           f"{len(objective.drawn)} (did ESDObjective change how it samples?)")
    seconds = objective.stamps[-1] - objective.stamps[args.warmup]
    drawn = objective.drawn[args.warmup: args.warmup + args.steps]
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"name": name, "seconds_per_step": seconds / args.steps, "steps_per_s": args.steps / seconds,
            "mean_i": sum(drawn) / len(drawn), "peak_gib": peak, "trained": len(outcome.tensors),
            "final_loss": outcome.final_loss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="the tiny SD-shaped pipeline (a CPU check)")
    parser.add_argument("--steps", type=int, default=12, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before them")
    parser.add_argument("--update-steps", type=int, default=None, help="timed steps of the update run (default --steps x 2)")
    parser.add_argument("--ddim-steps", type=int, default=50, help="ESD's DDIM steps n (i is drawn from 1..n-2)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--prompt", default="a photo of the number seven")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"# {' '.join(sys.argv)}")
    print(f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, device {device}"
          f"{' ' + torch.cuda.get_device_name(device) if device.type == 'cuda' else ''}, torch {torch.__version__}, "
          f"precision {precision_for(device)}, weights float32, trainable esd-x, batch {args.batch_size}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="harness-esd-speed-"))
    try:
        started = time.perf_counter()
        sd15_random_pipeline(work / "pipeline", str(device), tiny=args.tiny)
        pipeline = load_pipeline(str(work / "pipeline"), device=device, dtype=torch.float32)
        unet_params = sum(p.numel() for p in pipeline.unet.parameters())
        print(f"# pipeline {'tiny ' if args.tiny else ''}SD-v1.5-shaped, UNet {unet_params / 1e6:.1f} M parameters, "
              f"latents {pipeline.unet.config.in_channels}x{pipeline.unet.config.sample_size}^2, "
              f"built and loaded in {time.perf_counter() - started:.1f} s", flush=True)
        runs = [timed_run("esd", pipeline, args, device, work)]
        update_args = argparse.Namespace(**{**vars(args), "steps": args.update_steps or 2 * args.steps})
        runs.append(timed_run("update", pipeline, update_args, device, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("\n| run | timed steps | s/step | steps/s | mean i | peak GPU GiB | trained tensors |\n|---|---|---|---|---|---|---|")
    for run, steps in zip(runs, (args.steps, update_args.steps)):
        peak = f"{run['peak_gib']:.1f}" if run["peak_gib"] is not None else "-"
        mean_i = f"{run['mean_i']:.1f}" if run["name"] == "esd" else "- (no sampling)"
        print(f"| {run['name']} | {steps} | {run['seconds_per_step']:.4f} | {run['steps_per_s']:.3f} | "
              f"{mean_i} | {peak} | {run['trained']} |")
    esd, update = runs
    mean_i = (args.ddim_steps - 1) / 2
    per_sampling_step = (esd["seconds_per_step"] - update["seconds_per_step"]) / esd["mean_i"]
    expected = 1 / (update["seconds_per_step"] + mean_i * max(per_sampling_step, 0.0))
    print(f"\none sampling step (batch 2 x {args.batch_size}, no grad): {per_sampling_step:.4f} s; "
          f"expected ESD steps/s at mean i {mean_i:g}: {expected:.3f}")
    peak = max((r["peak_gib"] for r in runs if r["peak_gib"] is not None), default=None)
    print(f"RESULT esd_steps_per_s={esd['steps_per_s']:.4f} update_steps_per_s={update['steps_per_s']:.4f} "
          f"expected_esd_steps_per_s={expected:.4f} mean_i={esd['mean_i']:.1f} "
          f"peak_gib={f'{peak:.2f}' if peak is not None else 'na'}")


if __name__ == "__main__":
    main()
