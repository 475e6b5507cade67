"""Token-normalised column norms of a target layer's input, per (UNet call, layer).

A forward pre-hook on the module that owns each target weight sees X, the input of the pruned
linear: for `...ff.net.2.weight` that is the GEGLU output of `ff.net.0` (the dropout between
them is the identity at inference). X is flattened to (batch*tokens, in_features), every token
row is L2-normalised, and the squared entries are summed per column in fp32, separately for
every UNet call (a forward pre-hook on the UNet counts calls; with classifier-free guidance the
unconditional half of the batch is included). The norm returned is the root-mean-square over
token rows: ConceptPrune's column L2 norm divided by sqrt(rows), which leaves its top-k and its
base-vs-target comparison unchanged when both prompt sets have the same size and keeps them
fair when they do not.

Generation stops after the last call that is needed: scores of call t depend only on the
trajectory up to t, so calls beyond it cannot change them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from harness.errors import HarnessError
from harness.progress import bar
from harness.settings.generate import GenerationSettings

log = logging.getLogger(__name__)


class _EnoughCalls(Exception):
    """Raised from the UNet pre-hook once every needed call has been recorded."""


class TooFewCalls(HarnessError):
    """A pipeline run ended before the number of UNet calls asked for."""


class ColumnNormRecorder:
    """Hooks that accumulate squared token-normalised inputs of `layers` (2-D weights of linear
    modules) for the first `calls` UNet calls of every pipeline run."""

    def __init__(self, unet: nn.Module, layers: Sequence[str], calls: int) -> None:
        self.unet = unet
        self.layers = list(layers)
        self.calls = calls
        self.modules = {name: unet.get_submodule(name.rpartition(".")[0]) for name in self.layers}
        parameters = dict(unet.named_parameters())
        self.sums = {
            name: torch.zeros(calls, parameters[name].shape[1], dtype=torch.float32, device=parameters[name].device)
            for name in self.layers
        }
        self.rows = {name: torch.zeros(calls, dtype=torch.float64) for name in self.layers}
        self.call = -1
        self._handles: list[Any] = []

    def __enter__(self) -> ColumnNormRecorder:
        self._handles.append(self.unet.register_forward_pre_hook(self._count_call))
        for name, module in self.modules.items():
            self._handles.append(module.register_forward_pre_hook(self._recorder(name)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _count_call(self, module: nn.Module, args: Any) -> None:
        self.call += 1
        if self.call >= self.calls:
            raise _EnoughCalls

    def _recorder(self, name: str):
        def hook(module: nn.Module, args: Any) -> None:
            x = args[0].detach()
            x = x.reshape(-1, x.shape[-1]).float()
            x = F.normalize(x, p=2, dim=1)
            self.sums[name][self.call] += (x * x).sum(dim=0)
            self.rows[name][self.call] += x.shape[0]

        return hook

    def run(self, pipeline: Any, call_kwargs: dict[str, Any]) -> None:
        """One pipeline run, stopped once `calls` UNet calls are recorded."""
        self.call = -1
        try:
            pipeline(**call_kwargs)
        except _EnoughCalls:
            return
        if self.call + 1 < self.calls:
            raise TooFewCalls(f"generation made {self.call + 1} UNet calls, fewer than the {self.calls} needed")

    def norms(self) -> dict[str, torch.Tensor]:
        """Per layer, a (calls, in_features) fp32 tensor of root-mean-square column norms."""
        return {
            name: (self.sums[name] / self.rows[name].clamp(min=1).to(self.sums[name]).unsqueeze(1)).sqrt()
            for name in self.layers
        }


def column_norms(
    pipeline: Any,
    layers: Sequence[str],
    prompts: Sequence[str],
    calls: int,
    generation: GenerationSettings,
    seeds: Sequence[int],
    desc: str = "prompts",
    generator_device: str = "cpu",
) -> dict[str, torch.Tensor]:
    """Run `prompts` through `pipeline`, prompt i from seed `seeds[i]`, and return, per layer, the
    (calls, in_features) column norms of the layer's input for the first `calls` UNet calls."""
    recorder = ColumnNormRecorder(pipeline.unet, layers, calls)
    batch = max(1, generation.batch_size)
    with recorder, torch.no_grad():
        for start in bar(range(0, len(prompts), batch), desc=desc, unit="batch"):
            chunk = slice(start, start + batch)
            recorder.run(pipeline, generation.pipeline_kwargs(list(prompts[chunk]), list(seeds[chunk]),
                                                              generator_device=generator_device))
    log.debug("recorded %d UNet calls x %d layers over %d %s", calls, len(layers), len(prompts), desc)
    return recorder.norms()
