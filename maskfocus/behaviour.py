"""The weights of recent policy versions, to score a stale batch under the version that sampled it.

With `ray.max_staleness` > 0 a batch may reach the learner after one or more updates. With
`grpo.behaviour_weight_cap` set, the learner needs that batch's log-probs under the sampling (behaviour) version
for the decoupled PPO weights (maskfocus.grpo.behaviour_weights). `VersionSnapshots` keeps a copy of the trainable
parameters of the last few versions and swaps one in for a forward, in place, so it works the same on a plain
module, a DDP wrapper and an FSDP2-sharded module (whose parameters are shards: each rank copies its own).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


def reshard(module: nn.Module) -> None:
    """Drop any gathered full parameters of FSDP2 modules (an FSDP2 root keeps them after a forward), so that the
    next forward gathers the shards as they are now. Nothing for other modules."""
    for sub in module.modules():
        method = getattr(sub, "reshard", None)
        if callable(method):
            method()


class VersionSnapshots:
    """Copies of `module`'s parameters at the last `keep` recorded policy versions."""

    def __init__(self, module: nn.Module, keep: int):
        if keep < 1:
            raise ValueError(f"VersionSnapshots keeps at least one version, got keep={keep}")
        self.module = module
        self.keep = keep
        self._weights: OrderedDict[int, list[torch.Tensor]] = OrderedDict()

    def __contains__(self, version: int) -> bool:
        return version in self._weights

    @property
    def versions(self) -> list[int]:
        return list(self._weights)

    @torch.no_grad()
    def record(self, version: int) -> None:
        """Keep the module's current parameters as `version` (replacing an earlier copy of it), dropping the
        oldest copies beyond `keep`."""
        reshard(self.module)  # FSDP2 puts the gathered full parameters on the module after a forward
        self._weights.pop(version, None)
        self._weights[version] = [parameter.detach().clone() for parameter in self.module.parameters()]
        while len(self._weights) > self.keep:
            self._weights.popitem(last=False)

    @contextmanager
    def weights_of(self, version: int) -> Iterator[None]:
        """Inside, the module's parameters are those of `version`; on leaving (also on an error) they are
        restored exactly. Not for use with gradients: the swap is in place."""
        if version not in self._weights:
            raise KeyError(f"no weights of policy version {version} kept (have {self.versions})")
        reshard(self.module)  # before the parameters are listed: the sharded ones, not a gathered full copy
        parameters = list(self.module.parameters())
        with torch.no_grad():
            current = [parameter.detach().clone() for parameter in parameters]
        try:  # a copy that fails part-way still restores every parameter
            with torch.no_grad():
                for parameter, saved in zip(parameters, self._weights[version], strict=True):
                    parameter.copy_(saved)
            yield
        finally:
            with torch.no_grad():
                reshard(self.module)
                for parameter, saved in zip(parameters, current, strict=True):
                    parameter.copy_(saved)
