"""Peak host memory of the `esd` method on the SD-v1.5-shaped UNet in float32 on the CPU (issue 23).

Builds (once, into --pipeline) the random SD-v1.5-shaped pipeline of generation_throughput.py
(`--tiny`: the same builder at tiny widths), loads it with the harness's loader in float32, and
runs the registered `esd` method as the unlearn stage does (`harness.unlearn.esd.esd`: the
objective, the fine-tuning engine and the diff of the trained tensors afterwards) for --steps
steps. A thread samples the process's resident set size every 10 ms while the method runs; the
script prints the RSS with the pipeline loaded, the peak during the method, and their difference
(what ESD itself holds). The method's own code is whatever `harness` the interpreter imports, so
the same script measures an older checkout with PYTHONPATH pointing at it.

    PYTHONPATH=. python benchmarks/esd_memory.py --pipeline /tmp/sd15-random --threads 1
    PYTHONPATH=. python benchmarks/esd_memory.py --tiny --pipeline /tmp/sd15-tiny --threads 1
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the builder of the sibling script
from generation_throughput import sd15_random_pipeline  # noqa: E402

import harness  # noqa: E402
from harness.models.pipelines import load_pipeline  # noqa: E402
from harness.runtime import RuntimeSettings  # noqa: E402
from harness.settings.generate import GenerationSettings  # noqa: E402
from harness.settings.unlearn import ConceptSettings, MethodSettings  # noqa: E402
from harness.unlearn.esd import ESDParams, esd  # noqa: E402
from harness.unlearn.job import UnlearnJob  # noqa: E402
from harness.unlearn.method import UnlearnContext  # noqa: E402

GIB = 2**30


class PeakRSS:
    """The largest resident set size seen while the block runs (sampled every `interval` s)."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval, self.peak, self.process = interval, 0, psutil.Process()
        self.done = threading.Event()

    def __enter__(self) -> PeakRSS:
        self.peak = self.process.memory_info().rss
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while not self.done.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(self.interval)

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", required=True, help="folder of the random pipeline (built when absent)")
    parser.add_argument("--tiny", action="store_true", help="the tiny SD-shaped pipeline")
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--ddim-steps", type=int, default=3, help="ESD's DDIM steps (3: one sampling step a step)")
    parser.add_argument("--height", type=int, default=64, help="the recipe's image height and width (64: 8x8 latents)")
    parser.add_argument("--trainable", default="esd-x")
    parser.add_argument("--threads", type=int, help="torch intra-op threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    folder = Path(args.pipeline)
    if not (folder / "model_index.json").is_file():
        sd15_random_pipeline(folder, "cpu", tiny=args.tiny)
        print(f"# built {folder}; rerun to measure (the build's own peak is not ESD's)")
        return
    pipeline = load_pipeline(str(folder), device=torch.device("cpu"), dtype=torch.float32)
    unet_params = sum(p.numel() for p in pipeline.unet.parameters())
    generation = GenerationSettings(height=args.height, width=args.height)
    job = UnlearnJob(model=str(folder), concept=ConceptSettings(target="golf ball", kind="object"),
                     method=MethodSettings("esd"), generation=generation, out=Path("unused"),
                     runtime=RuntimeSettings(device="cpu"), source="benchmark", entry="methods[0]")
    params = ESDParams(steps=args.steps, ddim_steps=args.ddim_steps, trainable=args.trainable, checkpoint_every=10**9)
    with tempfile.TemporaryDirectory(prefix="harness-esd-memory-") as scratch:
        context = UnlearnContext(job=job, pipeline=pipeline, layers=[], device=torch.device("cpu"),
                                 scratch=Path(scratch), settings_key="esd-memory")
        with PeakRSS() as rss:
            baseline = rss.peak
            started = time.perf_counter()
            result = esd(context, params)
            seconds = time.perf_counter() - started
    trained = sum(t.numel() for t in result.tensors.values())
    print(f"# harness from {Path(harness.__file__).parent}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"# UNet {unet_params / 1e6:.1f} M parameters ({unet_params * 4 / GIB:.2f} GiB float32), "
          f"{args.trainable} trains {trained / 1e6:.1f} M; {args.steps} steps, ddim {args.ddim_steps}, "
          f"{args.height} px, {seconds:.1f} s")
    print(f"RESULT rss_loaded_gib={baseline / GIB:.2f} rss_peak_gib={rss.peak / GIB:.2f} "
          f"esd_extra_gib={(rss.peak - baseline) / GIB:.2f} "
          f"ru_maxrss_gib={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB:.2f}")


if __name__ == "__main__":
    main()
