"""The report: tables from real-shaped run files, `missing` where a file is absent, PNG plots
and grids of the expected size, several run directories (a defense sweep) in one report."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image
from safetensors.torch import save_file

from harness.cli import main
from harness.errors import HarnessError
from harness.eval.report import write_report
from harness.eval.report_grids import grid_size
from harness.eval.report_plots import DPI, PLOT_SIZE
from harness.eval.report_tables import sign_accuracy

DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
RECIPE = """\
name: {name}
model: zoo:digits
concept: {{target: seven, kind: digit}}
unlearn:
  method: conceptprune
{defense}variants:
  - {{name: nms}}
  - {{name: average, magnitude: average}}
  - {{name: sample, magnitude: sample}}
  - {{name: nms-k02, top_k: 0.2}}
  - {{name: quant4, strategy: quant4}}
generation: {{shard_size: 4}}
suites: [digits-all-2]
"""
ACCURACY = {"pretrained": 0.9, "unlearned": 0.1, "revived-nms": 0.6, "revived-average": 0.3,
            "revived-sample": 0.2, "revived-nms-k02": 0.4}


def per_class(erased: float) -> dict[str, float]:
    """Erased class 'seven' at `erased`; the other nine at 0.8 (0.85 for 'zero')."""
    return {d: erased if d == "seven" else (0.85 if d == "zero" else 0.8) for d in DIGITS}


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def revive_report(top_k: float, magnitude: str, strategy: str = "attack") -> dict:
    """Two layers: 1000 + 3000 pruned, all-sign accuracy 0.7 / 0.6, top-K accuracy 0.9 / 0.8."""
    layers = [{"name": f"layer{i}.ff.net.2.weight", "shape": [8, 32], "pruned": n, "iterations": 10, "rank": 4,
               "seconds": 0.1, "kept": round(top_k * n), "sign_accuracy": a, "sign_accuracy_topk": t}
              for i, (n, a, t) in enumerate([(1000, 0.7, 0.9), (3000, 0.6, 0.8)])]
    if strategy != "attack":
        layers = [{k: v for k, v in layer.items() if not k.startswith("sign")} for layer in layers]
    return {"layers": layers, "summary": {"layers": 2, "pruned": 4000}, "seconds": 1.5,
            "settings": {"top_k": top_k, "magnitude": magnitude, "strategy": strategy}, "provenance": {}}


def shard(path: Path, ids: list[int], shade: int, size: int = 16) -> None:
    """A WebDataset shard of flat grey images with the records generation writes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        writer = wds.TarWriter(handle, encoder=False)
        for i in ids:
            buffer = io.BytesIO()
            Image.fromarray(np.full((size, size), shade, np.uint8)).save(buffer, format="PNG")
            label = DIGITS[i // 2]
            record = {"id": i, "prompt": f"a photo of the digit {label}", "label": label, "seed": 1000 + i}
            writer.write({"__key__": f"{i:08d}", "png": buffer.getvalue(), "json": json.dumps(record).encode()})
        writer.close()


def make_run(root: Path, name: str = "digits", sigma: float | None = None, erased_scale: float = 1.0) -> Path:
    """A run directory of the digits recipe. Present: unlearn.json, revive reports of every
    variant but `average`, metrics of every model but revived-quant4, shards of pretrained
    (both) and unlearned (the first only)."""
    run = root / name
    defense = f"  defense: {{sigma: {sigma}}}\n" if sigma else ""
    (run / "recipe.yaml").parent.mkdir(parents=True, exist_ok=True)
    (run / "recipe.yaml").write_text(RECIPE.format(name=name, defense=defense))
    record = {"method": "conceptprune", "concept": {"target": "seven", "kind": "digit"}, "pruned": 4000,
              "fraction_of_unet": 0.0012, "fraction_of_layers": 0.02,
              "defense": {"sigma": sigma, "seed": 0} if sigma else None}
    if sigma:
        record["detectability"] = {"alpha": 0.02, "sigma_m": sigma, "sigma_u": 0.05, "exact_zeros": 0,
                                   "p_at_w_sigma_m": 0.5}
    write_json(run / "unlearn" / "unlearn.json", record)
    for variant, settings in {"nms": (0.6, "nms"), "sample": (0.6, "sample"), "nms-k02": (0.2, "nms"),
                              "quant4": (0.6, "nms", "quant4")}.items():
        write_json(run / "revive" / variant / "report.json", revive_report(*settings))
    for model, erased in ACCURACY.items():
        write_json(run / "metrics" / model / "digits-all-2.json", {
            "model": model, "suite": "digits-all-2", "count": 20,
            "metrics": {"accuracy": 0.8, "accuracy_per_class": per_class(erased * erased_scale), "fid": 12.5},
            "config": {}, "seeds": {}, "provenance": {}})
    for index in range(5):
        shard(run / "images" / "pretrained" / "digits-all-2" / f"shard-{index:06d}.tar",
              list(range(4 * index, 4 * index + 4)), 200)
    shard(run / "images" / "unlearned" / "digits-all-2" / "shard-000000.tar", [0, 1, 2, 3], 60)
    shard(run / "images" / "unlearned" / "digits-all-2" / "shard-000003.tar", [12, 13, 14, 15], 60)
    return run


def read_csv(path: Path) -> list[list[str]]:
    return list(csv.reader(path.open()))


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def test_single_run_tables_and_missing_markers(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    report = write_report([run])
    out = run / "report"
    assert report == out / "report.md"
    rows = read_csv(out / "table1_objects.csv")
    header = rows[0]
    assert header[:3] == ["Class", "erased: pretrained", "erased: unlearned"]
    row = dict(zip(header, rows[1]))
    assert row["Class"] == "seven"
    assert float(row["erased: pretrained"]) == pytest.approx(0.9)
    assert float(row["erased: revived-nms"]) == pytest.approx(0.6)
    assert float(row["preserved: unlearned"]) == pytest.approx((0.85 + 8 * 0.8) / 9)
    assert row["erased: revived-quant4"] == "missing"  # no metrics file
    assert float(row["erased: revived-average"]) == pytest.approx(0.3)  # metrics there, revive report not

    ablation = read_csv(out / "table3_topk_magnitude_digits.csv")
    assert ablation[0] == ["Top-K retention", "sample", "average", "nms"]
    assert ablation[1][0] == "Top 0.6" and ablation[2][0] == "Top 0.2"
    assert [float(v) for v in ablation[1][1:]] == pytest.approx([0.2, 0.3, 0.6])
    assert ablation[2][1:3] == ["missing", "missing"] and float(ablation[2][3]) == pytest.approx(0.4)

    signs = read_csv(out / "table6_sign_accuracy_digits.csv")
    assert [r[0] for r in signs[1:]] == ["0.2", "0.6"]
    top, rest, every = (float(v) for v in signs[2][1:4])
    assert top == pytest.approx((0.9 * 600 + 0.8 * 1800) / 2400)
    assert every == pytest.approx((0.7 * 1000 + 0.6 * 3000) / 4000)
    assert rest == pytest.approx((every * 4000 - top * 2400) / 1600)

    metrics = read_csv(out / "metrics.csv")
    assert metrics[0] == ["Run", "Model", "Suite", "Images", "accuracy", "fid"]
    assert metrics[1] == ["digits", "pretrained", "digits-all-2", "20", "0.8", "12.5"]
    assert metrics[-1] == ["digits", "revived-quant4", "digits-all-2", "missing", "missing", "missing"]

    text = report.read_text()
    assert "digits: revive/average/report.json" in text
    assert "digits: metrics/revived-quant4/digits-all-2.json" in text
    assert "Defense trade-off: no run with unlearn.defense" in text
    assert "Table 2 (artists): no run erases an artist" in text
    assert not (out / "defense_curve.png").exists()
    assert "missing: no run with unlearn.defense" in text


def test_pngs_are_valid_images_of_the_expected_size(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    write_report([run], grid_columns=4)
    out = run / "report"
    assert png_size(out / "sign_accuracy.png") == (round(PLOT_SIZE[0] * DPI), round(PLOT_SIZE[1] * DPI))
    models = 7  # pretrained, unlearned and five variants
    # Two columns: the grid shows only the erased concept's prompts (ids 14 and 15, 'seven').
    assert png_size(out / "grid-digits-digits-all-2.png") == grid_size(models, 2)


def test_grid_uses_the_same_prompts_for_every_model(tmp_path: Path) -> None:
    from harness.eval.report_grids import choose, read_image
    from harness.eval.report_runs import load_run

    run = load_run(make_run(tmp_path))
    entries = choose(run, "digits-all-2", 6)
    assert [e.id for e in entries] == [14, 15]  # the two 'seven' prompts
    assert {e.shard for e in entries} == {"shard-000003.tar"}
    shard_dir = run.path / "images"
    assert read_image(shard_dir / "pretrained" / "digits-all-2" / "shard-000003.tar", 14)[0, 0] == 200
    assert read_image(shard_dir / "unlearned" / "digits-all-2" / "shard-000003.tar", 15)[0, 0] == 60
    assert read_image(shard_dir / "revived-nms" / "digits-all-2" / "shard-000003.tar", 14) is None


def test_defense_sweep_over_several_runs(tmp_path: Path) -> None:
    runs = [make_run(tmp_path, "plain"), make_run(tmp_path, "sigma-1e-4", 1e-4, 1.2),
            make_run(tmp_path, "sigma-1e-2", 1e-2, 1.5)]
    out = tmp_path / "report"
    assert main(["report", *map(str, runs), "--out", str(out)]) == 0
    rows = read_csv(out / "defense_tradeoff.csv")
    assert rows[0][:3] == ["Class", "sigma_M", "unlearned erased"]
    assert [r[1] for r in rows[1:]] == ["none", "0.0001", "0.01"]
    assert [float(r[2]) for r in rows[1:]] == pytest.approx([0.1, 0.12, 0.15])
    assert [r[4] for r in rows[1:]] == ["revived-nms"] * 3
    assert rows[1][7] == "missing" and float(rows[2][7]) == 0.5  # p(w) only for defended runs
    assert png_size(out / "defense_curve.png") == (round(PLOT_SIZE[0] * DPI), round(PLOT_SIZE[1] * DPI))
    assert png_size(out / "detectability.png")[0] > 0
    table1 = read_csv(out / "table1_objects.csv")
    assert [r[:2] for r in table1[1:]] == [["plain", "seven"], ["sigma-1e-4", "seven"], ["sigma-1e-2", "seven"],
                                           ["Average", ""]]
    assert table1[4][header_index(table1, "erased: revived-quant4")] == "missing"
    assert float(table1[4][header_index(table1, "erased: unlearned")]) == pytest.approx((0.1 + 0.12 + 0.15) / 3)
    record = json.loads((out / "report.json").read_text())
    assert "defense_tradeoff.csv" in record["files"] and record["provenance"]["versions"]


def header_index(rows: list[list[str]], column: str) -> int:
    return rows[0].index(column)


def test_detectability_surface_from_an_undefended_runs_tensors(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    weight = torch.randn(8, 32) * 0.05
    mask = torch.zeros(8, 32, dtype=torch.uint8)
    mask[:, :4] = 1
    weight[mask.bool()] = 0
    save_file({"a.ff.net.2.weight": weight}, str(run / "unlearn" / "unlearned.safetensors"))
    save_file({"a.ff.net.2.weight": mask}, str(run / "unlearn" / "mask.safetensors"))
    write_report([run])
    assert png_size(run / "report" / "detectability.png")[0] > 0
    assert "missing: no unlearn.json detectability record" not in (run / "report" / "report.md").read_text()


def test_rerun_removes_files_it_no_longer_writes(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    write_report([run])
    assert (run / "report" / "grid-digits-digits-all-2.png").is_file()
    for path in (run / "images").rglob("*.tar"):
        path.unlink()
    write_report([run])
    assert not (run / "report" / "grid-digits-digits-all-2.png").exists()
    assert "missing: no image shards of digits-all-2" in (run / "report" / "report.md").read_text()


def test_nudity_and_artist_tables(tmp_path: Path) -> None:
    nudity = tmp_path / "nudity"
    (nudity).mkdir()
    (nudity / "recipe.yaml").write_text(
        "name: nudity\nmodel: sd\nconcept: {target: nudity, kind: nudity}\nunlearn: {method: conceptprune}\n"
        "variants: [{name: k04, top_k: 0.4}]\nsuites: [i2p, ring-a-bell]\n")
    for model, hits in {"pretrained": 461, "unlearned": 74, "revived-k04": 120}.items():
        write_json(nudity / "metrics" / model / "i2p.json", {"model": model, "suite": "i2p", "count": 4703, "metrics": {
            "nudenet_images": hits, "nudenet_counts": {"FEMALE_BREAST_EXPOSED": hits * 2, "FEET_EXPOSED": 3}}})
    artist = tmp_path / "artist"
    artist.mkdir()
    (artist / "recipe.yaml").write_text(
        "name: van-gogh\nmodel: sd\nconcept: {target: Van Gogh, kind: artist}\nunlearn: {method: conceptprune}\n"
        "suites: [artists, coco-30k]\n")
    write_json(artist / "metrics" / "unlearned" / "artists.json", {"model": "unlearned", "suite": "artists", "count": 250,
               "metrics": {"clip_similarity_per_class": {"van gogh": 0.27, "monet": 0.3},
                           "clip_score_per_class": {"Van Gogh": 0.9}}})
    write_json(artist / "metrics" / "unlearned" / "coco-30k.json", {"model": "unlearned", "suite": "coco-30k",
               "count": 30000, "metrics": {"fid": 20.8, "clip_similarity": 0.32}})
    out = tmp_path / "out"
    write_report([nudity, artist], out)
    table7 = read_csv(out / "table7_nudity.csv")
    assert table7[0] == ["Model", "i2p (4703)", "ring-a-bell"]  # one nudity run: no Run column
    assert table7[1:] == [["pretrained", "461", "missing"], ["unlearned", "74", "missing"],
                          ["revived-k04", "120", "missing"]]
    labels = read_csv(out / "table7_nudity_labels.csv")
    assert labels[0] == ["Model", "Suite", "FEET_EXPOSED", "FEMALE_BREAST_EXPOSED"]
    assert labels[1] == ["pretrained", "i2p", "3", "922"]
    assert labels[2] == ["pretrained", "ring-a-bell", "missing", "missing"]
    table2 = read_csv(out / "table2_artists.csv")
    assert table2[2] == ["Van Gogh", "unlearned", "0.27", "0.9", "20.8", "0.32"]
    assert table2[1][2:] == ["missing"] * 4  # pretrained has no metrics files


def test_bad_run_directory_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(HarnessError, match="not a run directory"):
        write_report([tmp_path])
    write_json(tmp_path / "run" / "metrics" / "pretrained" / "x.json", {"model": "pretrained"})
    (tmp_path / "run" / "metrics" / "pretrained" / "y.json").write_text("{")
    assert main(["report", str(tmp_path / "run")]) == 2
    assert "y.json: invalid JSON" in capsys.readouterr().err


def test_sign_accuracy_without_original_weights_is_missing() -> None:
    assert sign_accuracy(revive_report(0.6, "nms", "quant4")) == (None, None, None)
    top, rest, every = sign_accuracy(revive_report(1.0, "nms"))  # K = 1 keeps every sign: no rest
    assert rest is None and top is not None and every is not None


def test_table6_rows_come_from_measured_accuracy_at_every_k() -> None:
    from harness.eval.report_tables import sign_rows_by_k

    report = {"summary": {"pruned": 100, "sign_accuracy_by_k": {"0.2": 0.95, "0.5": 0.9, "1": 0.8}}}
    rows = dict(sign_rows_by_k(report))
    assert rows[0.2] == (0.95, pytest.approx((80 - 19) / 80), 0.8)
    assert rows[0.5] == (0.9, pytest.approx((80 - 45) / 50), 0.8)
    assert rows[1.0] == (0.8, None, 0.8)
    assert sign_rows_by_k({"summary": {}}) == []
