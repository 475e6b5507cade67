"""The revive command end to end on a tiny SD-shaped UNet, in one and in two processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from harness.cli import main
from harness.layout import AttackFiles
from harness.models.checkpoints import save_tensors
from harness.records import AttackRecord, read_record

FFN = "transformer_blocks.0.ff.net.2.weight"
UNTOUCHED = "mid_block.attentions.0.transformer_blocks.0.ff.net.2.weight"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, tiny_sd_unet) -> dict[str, Path]:
    """An original UNet folder with structured FFN weights, and a ConceptPrune-style fp16 .pt dump
    with the top 2% |w| of every row of every FFN zeroed (the mid block's left unpruned)."""
    root = tmp_path_factory.mktemp("models")
    unet = tiny_sd_unet(seed=0)
    gen = torch.Generator().manual_seed(1)
    state = unet.state_dict()
    for name, weight in state.items():
        if name.endswith(FFN):
            rows, cols = weight.shape
            structured = torch.randn(rows, 4, generator=gen) @ torch.randn(4, cols, generator=gen) / 2
            state[name] = (structured + 0.05 * torch.randn(rows, cols, generator=gen)).half().float()
    unet.load_state_dict(state)
    unet.save_pretrained(root / "original")
    pruned_state = {k: v.clone().half() for k, v in state.items()}
    for name in pruned_state:
        if name.endswith(FFN) and name != UNTOUCHED:
            weight = pruned_state[name]
            top = weight.abs().topk(max(1, int(0.02 * weight.shape[1])), dim=1).indices
            weight.scatter_(1, top, 0.0)
    torch.save(pruned_state, root / "unlearned.pt")
    return {"original": root / "original", "unlearned": root / "unlearned.pt"}


def run_cli(*args: str) -> int:
    return main(["revive", *args])


def test_revive_end_to_end(models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert run_cli("--unlearned", str(models["unlearned"]), "--original", str(models["original"]),
                   "--out", str(out), "--top-k", "0.6") == 0
    files = AttackFiles(out)
    record = read_record(AttackRecord, files.record)
    report = record.revival
    layers = {layer.name: layer for layer in report.layers}
    assert len(layers) == 16
    for name, layer in layers.items():
        if name == UNTOUCHED:
            assert layer.pruned == 0 and layer.iterations == 0
        else:
            assert layer.pruned == layer.shape[0] * max(1, int(0.02 * layer.shape[1]))
            assert layer.sign_accuracy > 0.8
            assert layer.sign_accuracy_topk >= layer.sign_accuracy - 1e-9
            assert layer.sign_accuracy_by_k["1"] == pytest.approx(layer.sign_accuracy)
            assert layer.sign_accuracy_by_k["0.6"] == pytest.approx(layer.sign_accuracy_topk)
    revived = load_file(str(files.tensors))
    unlearned = torch.load(models["unlearned"], weights_only=True)
    assert set(revived) == set(layers)
    for name, weight in revived.items():
        zero = unlearned[name] == 0
        assert weight.dtype == torch.float16
        assert weight[~zero].equal(unlearned[name][~zero])
        if name != UNTOUCHED:
            assert int((weight[zero] != 0).sum()) == layers[name].kept
    assert report.summary.sign_accuracy_by_k["0.1"] >= report.summary.sign_accuracy_by_k["1"]
    assert report.settings["top_k"] == 0.6 and record.provenance["versions"]["torch"]
    assert files.tensors.name in capsys.readouterr().out
    assert not files.parts.exists()


def test_quant4_and_ideal_strategies_run_through_the_same_command(models: dict[str, Path], tmp_path: Path) -> None:
    assert run_cli("--unlearned", str(models["unlearned"]), "--strategy", "quant4", "--out", str(tmp_path / "q")) == 0
    q = load_file(str(AttackFiles(tmp_path / "q").tensors))
    name = f"down_blocks.0.attentions.0.{FFN}"
    levels = q[name].float() / (q[name].float().abs().max(dim=1, keepdim=True).values / 7)
    assert torch.allclose(levels, levels.round(), atol=2e-2)
    assert run_cli("--unlearned", str(models["unlearned"]), "--strategy", "ideal-sign-nms", "--out", str(tmp_path / "i")) == 2


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--unlearned", "missing.pt"], "missing.pt: no such file or folder"),
        (["--layers", "*nothing*"], "layer pattern '*nothing*' matches no parameter"),
        (["--top-k", "1.5"], "top_k must lie in (0, 1]"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    args = ["--unlearned", str(models["unlearned"]), "--out", str(tmp_path / "o"), *extra]
    assert run_cli(*args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not AttackFiles(tmp_path / "o").record.exists()


def test_mask_file_of_wrong_shape_and_non_finite_weights(models: dict[str, Path], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    name = f"down_blocks.0.attentions.0.{FFN}"
    save_tensors({name: torch.zeros(3, 3, dtype=torch.uint8)}, tmp_path / "mask.safetensors")
    assert run_cli("--unlearned", str(models["unlearned"]), "--layers", f"down_blocks.0.attentions.0.{FFN}",
                   "--mask-file", str(tmp_path / "mask.safetensors"), "--out", str(tmp_path / "o")) == 2
    assert "has shape (3, 3), the weight has (32, 128)" in capsys.readouterr().err
    state = torch.load(models["unlearned"], weights_only=True)
    state[name][0, 0] = float("nan")
    save_tensors(state, tmp_path / "nan.safetensors")
    assert run_cli("--unlearned", str(tmp_path / "nan.safetensors"), "--out", str(tmp_path / "o")) == 2
    assert "1 non-finite weight(s)" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_one_and_two_processes_give_identical_output(models: dict[str, Path], tmp_path: Path, repo: Path) -> None:
    """The README's command line as it is (no --device): on a machine without GPUs the two processes
    share the layers, and the output is the one a single process writes."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo)}
    common = ["--unlearned", str(models["unlearned"]), "--original", str(models["original"]), "--magnitude", "sample"]
    outputs = {}
    for processes in (1, 2):  # on a machine without GPUs, --multi_gpu starts CPU processes (gloo)
        out = tmp_path / f"p{processes}"
        command = [sys.executable, "-m", "accelerate.commands.launch", *(["--multi_gpu"] if processes > 1 else []),
                   "--num_processes", str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                   str(repo / "harness" / "revive.py"), *common, "--out", str(out)]
        done = subprocess.run(command, check=True, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert done.stdout.count("wrote ") == 1  # the summary comes from the main process alone
        outputs[processes] = out
    one = load_file(str(AttackFiles(outputs[1]).tensors))
    two = load_file(str(AttackFiles(outputs[2]).tensors))
    assert list(one) == list(two)
    assert all(one[name].equal(two[name]) for name in one)
    records = {processes: read_record(AttackRecord, AttackFiles(out).record) for processes, out in outputs.items()}
    assert records[2].revival.processes == 2
    assert [layer.why for layer in records[2].revival.layers] == [layer.why for layer in records[1].revival.layers]
    assert all(layer.why for layer in records[2].revival.layers)  # the main process's masks, in every process's part
    assert not AttackFiles(outputs[2]).masks.exists()


def test_a_rerun_with_the_same_settings_reuses_and_a_changed_one_recomputes(
        models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    args = ["--unlearned", str(models["unlearned"]), "--out", str(out), "--top-k", "0.6"]
    assert run_cli(*args) == 0
    files = AttackFiles(out)
    first, stamp = read_record(AttackRecord, files.record), files.tensors.stat().st_mtime_ns
    assert run_cli(*args) == 0
    assert files.tensors.stat().st_mtime_ns == stamp and read_record(AttackRecord, files.record) == first
    assert run_cli(*args[:-1], "0.2") == 0
    second = read_record(AttackRecord, files.record)
    assert second.key != first.key and second.revival.settings["top_k"] == 0.2
    assert second.revival.summary.kept < first.revival.summary.kept


def test_a_model_with_nothing_pruned_says_so_and_points_at_the_mask_options(
        models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert run_cli("--unlearned", str(models["original"]), "--out", str(out)) == 2
    error = capsys.readouterr().err.strip()
    assert "no target layer has a pruned entry" in error and "--zero-threshold" in error and "\n" not in error
    assert run_cli("--unlearned", str(models["original"]), "--out", str(out), "--allow-nothing-pruned") == 0
    assert "nothing revived" in capsys.readouterr().out


def test_the_fidelity_switch_is_taken_and_recorded(models: dict[str, Path], tmp_path: Path) -> None:
    assert run_cli("--unlearned", str(models["unlearned"]), "--out", str(tmp_path / "r"), "--top-k", "0.5",
                   "--fidelity", "reference-code") == 0
    record = read_record(AttackRecord, AttackFiles(tmp_path / "r").record)
    assert record.fidelity == "reference-code" and record.revival.settings["fidelity"] == "reference-code"
    pruned = [layer for layer in record.revival.layers if layer.pruned]
    assert all(layer.fidelity == "reference-code" for layer in pruned)
    assert all(layer.kept == layer.pruned - int(0.5 * layer.pruned) for layer in pruned)  # the authors' count rule
