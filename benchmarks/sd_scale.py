"""Every stage of a small recipe at full Stable Diffusion v1.5 size, with random weights.

Builds an SD-v1.5-shaped pipeline from its configs (UNet 860M, CLIP ViT-L/14 text encoder 123M,
VAE 84M; no download) with a real CLIP BPE tokenizer made from the vocabulary file open_clip
ships, saves random scorer weights (ResNet-50, a CLIP, torch-fidelity's Inception) as local
files, and runs the recipe as a user with a local folder would, one harness process per unit:
ConceptPrune on the 16 default layers, ConceptPrune under the Gaussian defense (its undefended
twin's masks reused), a few ESD-x steps, the revival of the 16 layers (exact zeros, and through
the eq7 detector on the defended model), generation of a prompt file at reduced size, and
scoring (accuracy, CLIP, FID). Prints seconds and peak memory (resident, and GPU where used) per
stage as a Markdown table.

    python benchmarks/sd_scale.py                  # full size, on the CPU
    python benchmarks/sd_scale.py --tiny           # the same path at toy widths (a check of the script)
    python benchmarks/sd_scale.py --device cuda --height 512 ...          # on a GPU
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generation_throughput import sd15_random_pipeline  # noqa: E402

from harness.slurm.measure import measure_command  # noqa: E402


def clip_tokenizer_files(folder: Path) -> Path:
    """CLIP's BPE tokenizer (vocab.json, merges.txt) from open_clip's bpe_simple_vocab_16e6 file,
    built as CLIP builds its vocabulary: bytes, bytes + </w>, the merges, the two special tokens."""
    import open_clip
    from open_clip.tokenizer import bytes_to_unicode

    path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    merges = [tuple(line.split()) for line in gzip.open(path, "rt", encoding="utf-8").read().split("\n")[1:49152 - 256 - 2 + 1]]
    vocab = list(bytes_to_unicode().values())
    vocab += [v + "</w>" for v in vocab] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    return folder


def build_pipeline(folder: Path, tiny: bool) -> None:
    """The SD-v1.5-shaped random pipeline, with the real CLIP tokenizer in place of the stand-in."""
    from transformers import CLIPTokenizer

    sd15_random_pipeline(folder, "cpu", tiny=tiny)
    files = clip_tokenizer_files(Path(tempfile.mkdtemp()) / "bpe")
    tokenizer = CLIPTokenizer(str(files / "vocab.json"), str(files / "merges.txt"), model_max_length=77)
    if tiny:  # the tiny text encoder's embedding table is CLIP's size too (49408), so the real ids fit
        assert len(tokenizer) == 49408
    tokenizer.save_pretrained(folder / "tokenizer")


def scorer_weights(folder: Path, tokenizer: Path, tiny: bool) -> dict[str, Path]:
    """Random ResNet-50 weights and a small random CLIP (with the pipeline's tokenizer), as local files."""
    from torchvision.models import resnet50
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    from harness.models.checkpoints import save_tensors

    folder.mkdir(parents=True, exist_ok=True)
    resnet = save_tensors(resnet50().state_dict(), folder / "resnet50.safetensors")
    width = 32 if tiny else 512
    layers = {"intermediate_size": 2 * width, "num_hidden_layers": 2, "num_attention_heads": 4, "hidden_size": width}
    config = CLIPConfig(text_config=layers, vision_config=layers | {"image_size": 224, "patch_size": 32},
                        projection_dim=width)
    clip = folder / "clip"
    CLIPModel(config).save_pretrained(clip)
    CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=CLIPTokenizer.from_pretrained(str(tokenizer))
                  ).save_pretrained(clip)
    return {"resnet": resnet, "clip": clip, "inception": random_inception_file(folder)}


def random_inception_file(folder: Path) -> Path:
    """torch-fidelity's Inception-v3 with random (He-initialised) weights, saved under the real
    weights file's name, as a user's local copy would be."""
    from unittest import mock

    import torch
    import torch_fidelity.feature_extractor_inceptionv3 as inception

    from harness.score.metrics.fid import INCEPTION_FILE

    with mock.patch.object(inception, "load_state_dict_from_url", lambda *a, **k: None), \
         mock.patch.object(inception.FeatureExtractorInceptionV3, "load_state_dict", lambda *a, **k: None):
        network = inception.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    for module in network.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    path = folder / INCEPTION_FILE
    torch.save(network.state_dict(), path)
    return path


RECIPE = """\
name: sd-scale
model: {model}
concept: {{target: golf ball, kind: object}}
methods:
  - method: conceptprune
    layers: ["*transformer_blocks.0.ff.net.2.weight"]
    params: {{skill_ratio: 0.02, tau: 2, seed: 0}}
  - method: conceptprune
    name: conceptprune-sigma-0.01
    layers: ["*transformer_blocks.0.ff.net.2.weight"]
    params: {{skill_ratio: 0.02, tau: 2, seed: 0}}
    defense: {{sigma: 0.01, seed: 0}}
  - method: esd
    params: {{steps: {esd_steps}, ddim_steps: 4}}
attacks:
  - {{attack: nms}}
  - {{attack: nms, name: nms-eq7, params: {{mask: {{detector: eq7}}}}}}
generation: {{steps: {steps}, guidance: 7.5, height: {height}, width: {height}, scheduler: PNDMScheduler,
             dtype: {dtype}, batch_size: {batch}, shard_size: {shard}}}
score: {{classifier: resnet50, classifier_weights: {resnet}, clip_weights: {clip}}}
suites: [{objects}, {captions}]
"""

OBJECTS = ["golf ball", "church", "parachute", "tench"]
SCENES = ["road", "park", "kitchen", "beach", "forest", "garden", "street", "field", "room", "lake"]


def scenes_folder(folder: Path) -> Path:
    """A prompt data folder holding only common_scenes.txt (ConceptPrune's "a {scene}" pairs)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "common_scenes.txt").write_text("\n".join(SCENES) + "\n")
    return folder


def units(recipe: Path, run: Path, extra: list[str], inception: Path) -> list[tuple[str, list[str]]]:
    """(stage label, harness arguments) of every measured unit, in order."""
    base = ["benchmark", str(recipe), "--run-dir", str(run), *extra]
    shards = run / "images" / "pretrained" / "none" / "objects"
    fid = ["score", "--shards", str(shards), "--suite", str(recipe.parent / "objects.csv"), "--metrics", "fid",
           "--fid-features", "inception", "--fid-weights", str(inception), "--fid-reference", str(shards),
           "--out", str(run / "fid.json"), *(e for e in extra if e not in ("--device", "cpu", "cuda"))]
    return [
        ("unlearn conceptprune (16 layers)", [*base, "--stage", "unlearn", "--method", "conceptprune"]),
        ("unlearn conceptprune + defense (twin reused)", [*base, "--stage", "unlearn", "--method", "conceptprune-sigma-0.01"]),
        ("unlearn esd-x", [*base, "--stage", "unlearn", "--method", "esd"]),
        ("revival nms (16 layers, exact zeros)", [*base, "--stage", "attack", "--method", "conceptprune", "--attack", "nms"]),
        ("revival nms-eq7 (defended, eq7 detector)",
         [*base, "--stage", "attack", "--method", "conceptprune-sigma-0.01", "--attack", "nms-eq7"]),
        ("generate pretrained (both suites)", [*base, "--stage", "generate", "--model", "pretrained"]),
        ("score pretrained (accuracy, clip)", [*base, "--stage", "score", "--model", "pretrained"]),
        ("score fid (local Inception file)", fid),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="toy widths: a quick check of the same path")
    parser.add_argument("--data-dir", help="prompt data folder with common_scenes.txt for ConceptPrune's prompt pairs "
                                           "(default: ten scenes the script writes)")
    parser.add_argument("--device", default="cpu", help="torch device of every stage (cpu, cuda)")
    parser.add_argument("--height", type=int, default=256, help="generated image side (SD's own: 512)")
    parser.add_argument("--steps", type=int, default=4, help="PNDM steps (tau is 2)")
    parser.add_argument("--esd-steps", type=int, default=3, help="ESD training steps")
    parser.add_argument("--prompts", type=int, default=4, help="prompts per suite")
    parser.add_argument("--dtype", default="float32", help="dtype of every stage (float16 on a GPU)")
    parser.add_argument("--out", type=Path, help="folder to keep (default: a temporary one)")
    args = parser.parse_args()
    root = args.out or Path(tempfile.mkdtemp(prefix="sd-scale-"))
    rows = []
    started = time.monotonic()
    build_pipeline(root / "pipeline", args.tiny)
    rows.append(("build the SD-v1.5-shaped pipeline (random, saved fp16)", time.monotonic() - started, None, None))
    weights = scorer_weights(root / "scorers", root / "pipeline" / "tokenizer", args.tiny)
    objects = root / "objects.csv"
    objects.write_text("prompt,label\n" + "".join(f"a photo of a {o},{o}\n" for o in (OBJECTS * args.prompts)[: args.prompts]))
    captions = root / "captions.txt"
    captions.write_text("".join(f"a {o} on a table\n" for o in (OBJECTS * args.prompts)[: args.prompts]))
    recipe = root / "sd-scale.yaml"
    recipe.write_text(RECIPE.format(model=root / "pipeline", esd_steps=args.esd_steps, steps=args.steps,
                                    height=args.height, dtype=args.dtype, batch=args.prompts, shard=args.prompts,
                                    resnet=weights["resnet"], clip=weights["clip"], objects=objects, captions=captions))
    data_dir = args.data_dir or str(scenes_folder(root / "data"))
    extra = ["--data-dir", data_dir, "--device", args.device]
    if args.device.startswith("cuda"):
        extra += ["--accelerator", "gpu"]
    for label, arguments in units(recipe, root / "run", extra, weights["inception"]):
        print(f"sd_scale: {label} ...", file=sys.stderr, flush=True)
        seconds, rss, gpu = measure_command([sys.executable, "-m", "harness.cli", *arguments],
                                            root / "logs" / f"{len(rows):02d}.log", label)
        rows.append((label, seconds, rss, gpu))
    print(f"| stage ({'tiny' if args.tiny else 'full SD-v1.5 size'}, {args.height} px, {args.steps} steps, "
          f"{args.device}) | seconds | peak resident MB | peak GPU MB |")
    print("|---|---|---|---|")
    for label, seconds, rss, gpu in rows:
        print(f"| {label} | {seconds:.1f} | {'-' if rss is None else f'{rss:.0f}'} | {'-' if gpu is None else f'{gpu:.0f}'} |")
    print(f"(folder: {root})")


if __name__ == "__main__":
    main()
