"""Entropy-based dynamic routing for training rollouts (ALGORITHM.md section 2).

At every sampling step the samples of each group with the lowest mean entropy take the exploratory branch: their
guided logits are divided by a per-token temperature tau(H) = a * exp(-H / b) + c, which the sampler applies to both
the token draw and the confidence ordering. The other samples keep temperature 1 (the standard branch). Routing is
for training rollouts only; evaluation samples without a router.

Shape legend: B samples, G group size, L image tokens, V codebook size.
"""

from __future__ import annotations

from typing import Literal

import torch

RouteScope = Literal["group", "batch"]
ROUTE_SCOPES: tuple[str, ...] = ("group", "batch")


def token_entropy(logits_BLV: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of the softmax distribution at every position: (B, L, V) -> (B, L), float32.
    A -inf logit is a token of probability 0 and adds nothing (0 log 0 = 0)."""
    log_probs_BLV = torch.log_softmax(logits_BLV.float(), dim=-1)
    probs_BLV = log_probs_BLV.exp()
    # Filled before the product (not after) so that 0 * -inf gives neither a NaN value nor a NaN gradient.
    return -(probs_BLV * log_probs_BLV.masked_fill(probs_BLV == 0, 0.0)).sum(-1)


def exploration_temperature(entropy_BL: torch.Tensor, a: float = 2.5, b: float = 3.0, c: float = 0.7) -> torch.Tensor:
    """tau = a * exp(-H / b) + c per token, same shape as `entropy_BL`: confident tokens get the hottest temperature."""
    return a * torch.exp(-entropy_BL / b) + c


def _lowest_half(entropy_NG: torch.Tensor) -> torch.Tensor:
    """True for the floor(G/2) lowest entries of each row; ties go to the lower index (stable sort)."""
    order_NG = torch.sort(entropy_NG, dim=-1, stable=True).indices
    rank_NG = torch.empty_like(order_NG)
    rank_NG.scatter_(-1, order_NG, torch.arange(entropy_NG.shape[-1], device=entropy_NG.device).expand_as(order_NG))
    return rank_NG < entropy_NG.shape[-1] // 2


def route_lowest_entropy(entropy_B: torch.Tensor, group_size: int, scope: RouteScope = "group") -> torch.Tensor:
    """Which samples take the exploratory branch, (B,) bool.

    scope "group": within each contiguous group of `group_size` samples (sample b is in group b // group_size), the
    floor(G/2) samples with the lowest entropy. scope "batch": the floor(B/2) lowest over the whole batch (the released
    code's device-batch median; `group_size` is then unused). Ties are broken by index, so the result is deterministic.
    At the first step every sample of a group has the same input (all masks, one prompt) and the same entropy: the
    first floor(G/2) explore there (the samples of a group are exchangeable, so no sample is favoured).
    """
    if scope not in ROUTE_SCOPES:
        raise ValueError(f"router scope must be one of {ROUTE_SCOPES}, got {scope!r}")
    if entropy_B.dim() != 1:
        raise ValueError(f"entropy_B must be 1-D (one mean entropy per sample), got shape {tuple(entropy_B.shape)}")
    if scope == "batch":
        return _lowest_half(entropy_B.unsqueeze(0)).squeeze(0)
    if group_size < 1 or entropy_B.shape[0] % group_size != 0:
        raise ValueError(f"batch size {entropy_B.shape[0]} is not a multiple of the group size {group_size}")
    return _lowest_half(entropy_B.view(-1, group_size)).flatten()


class EntropyRouter:
    """The sampler's `token_temperature` hook: routes per step and returns the per-token temperatures.

    Usage: `sample(..., token_temperature=EntropyRouter(group_size=G))`. Stateless, so one instance serves every
    rollout; the sampler records the routes it returns.
    """

    def __init__(
        self, a: float = 2.5, b: float = 3.0, c: float = 0.7, *, group_size: int, scope: RouteScope = "group"
    ) -> None:
        if scope not in ROUTE_SCOPES:
            raise ValueError(f"router scope must be one of {ROUTE_SCOPES}, got {scope!r}")
        if b <= 0 or c <= 0 or a < 0:
            raise ValueError(f"router temperature needs a >= 0, b > 0, c > 0 (got a={a}, b={b}, c={c})")
        if group_size < 1:
            raise ValueError(f"router group_size must be >= 1, got {group_size}")
        self.a, self.b, self.c = a, b, c
        self.group_size = group_size
        self.scope: RouteScope = scope

    def __call__(
        self, step: int, entropy_B: torch.Tensor, entropy_BL: torch.Tensor, masked_BL: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(temperature_BL, routes_B): tau(H) per token on routed samples, 1 elsewhere. `entropy_B` is each sample's
        mean entropy over its masked tokens, `entropy_BL` every token's (`token_entropy` of the guided logits).

        Known (unmasked) positions also get tau on routed samples; the sampler keeps those tokens regardless.
        """
        routes_B = route_lowest_entropy(entropy_B, self.group_size, self.scope)
        tau_BL = exploration_temperature(entropy_BL, self.a, self.b, self.c)
        return torch.where(routes_B.unsqueeze(-1), tau_BL, torch.ones_like(tau_BL)), routes_B
