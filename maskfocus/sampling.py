"""MaskGIT sampling with a cosine schedule and Gumbel-perturbed confidence (ALGORITHM.md section 1).

One implementation serves evaluation (no recording, no routing) and RL rollouts (recording the
trajectory; a router may temper the logits of some samples per step).

Shape legend: B samples, T steps, L image tokens, V codebook size.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from maskfocus.compiled import sampling_module
from maskfocus.config import ConfigError, SamplerConfig
from maskfocus.models.base import Condition, MaskedGenerator
from maskfocus.router import token_entropy

# (step, entropy_B, entropy_BL, masked_BL) -> (per-token temperature (B, L) or None, route_B bool): the mean masked
# entropy and every token's entropy of the guided logits, computed once by the sampler (at Meissonic's (B, 4096, 8192)
# each pass over the logits makes float32 temporaries of about 2 GB for 16 samples)
TokenTemperature = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor | None, torch.Tensor]]


def mask_schedule(num_tokens: int, num_steps: int) -> list[int]:
    """Masked-token counts n_0 .. n_T: n_0 = L, n_{i+1} = floor(L cos(pi/2 (i+1)/T)) in [1, n_i - 1], n_T = 0."""
    counts = [num_tokens]
    for i in range(num_steps):
        if i == num_steps - 1:
            counts.append(0)
            continue
        target = math.floor(num_tokens * math.cos(math.pi / 2 * (i + 1) / num_steps))
        counts.append(max(0, min(counts[-1] - 1, max(1, target))))
    return counts


def gumbel_temperature(step: int, num_steps: int, initial: float) -> float:
    """tau_i = tau_0 * (1 - (i + 1) / T): step 0 gets tau_0 * (1 - 1/T), the last step 0.

    The released code uses linspace(tau_0, 0, T) instead (tau_0 at step 0, the same 0 at the last step). We keep
    ours: every measured score in benchmarks/RESULTS.md was sampled with it, and the last step, which re-masks
    nothing, is noise-free either way.
    """
    return initial * (1.0 - (step + 1) / num_steps)


def seeded_generator(*keys: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A torch.Generator seeded from a tuple of keys; distinct tuples get distinct streams. Runs key each stream by
    (run seed, iteration, role), not by worker (ALGORITHM.md section 1 names the worker): each iteration goes to
    one worker, and a redone iteration, or a run with another number of workers, draws the same stream."""
    seed = 0
    for key in keys:
        seed = (seed * 1_000_003 + int(key) + 1) % (2**63 - 1)
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


def _gumbel(shape: torch.Size, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Gumbel noise on `device`, drawn on the generator's device: torch refuses a generator of another device type,
    and a caller's CPU generator may drive a CUDA model (the package's own callers seed on the model's device, since
    a CPU draw of (B, L, V) noise per step is slow at Meissonic's size)."""
    uniform = torch.rand(shape, generator=generator, device=generator.device).to(device)
    return -torch.log(-torch.log(uniform.clamp_(1e-20, 1.0 - 1e-7)))


@dataclass(frozen=True)
class SampleResult:
    """Final tokens and, when recorded, the trajectory (inputs of every step)."""

    tokens_BL: torch.Tensor
    masks_BTL: torch.Tensor | None = None
    """Input mask of each step: True where the position was masked going into the step."""
    x0_BTL: torch.Tensor | None = None
    """x0 prediction of each step (drawn tokens at masked positions, known tokens elsewhere)."""
    entropy_BT: torch.Tensor | None = None
    """Mean entropy of the guided distribution over each sample's masked positions."""
    routes_BT: torch.Tensor | None = None
    """True where the sample took the exploratory branch at that step."""


def guided_logits(
    model: MaskedGenerator,
    tokens_BL: torch.Tensor,
    condition: Condition,
    uncondition: Condition | None,
    cfg_scale: float,
    step: int | torch.Tensor,
    num_steps: int,
    module: nn.Module | None = None,
) -> torch.Tensor:
    """l = l_uncond + s (l_cond - l_uncond), both branches in one forward; no CFG when uncondition is None.
    `step` may be per sample (B,). `module` replaces the model's transformer (the compiled sampling copy)."""
    if uncondition is None:
        return model.logits(tokens_BL, condition, step, num_steps, module=module)
    tokens_2BL, condition_2B = torch.cat([tokens_BL, tokens_BL]), Condition.cat([condition, uncondition])
    step_2B = torch.cat([step, step]) if isinstance(step, torch.Tensor) else step
    both = model.logits(tokens_2BL, condition_2B, step_2B, num_steps, module=module)
    cond_BLV, uncond_BLV = both.chunk(2)
    # A -inf logit (a token a model rules out) would make the formula -inf - -inf = NaN. A token the conditional
    # branch rules out stays out; one only the unconditional branch rules out gets no guidance push.
    uncond_BLV = torch.where(torch.isneginf(uncond_BLV), cond_BLV, uncond_BLV)
    guided_BLV = uncond_BLV + cfg_scale * (cond_BLV - uncond_BLV)
    return torch.where(torch.isneginf(cond_BLV), cond_BLV, guided_BLV)


def masked_mean(entropy_BL: torch.Tensor, masked_BL: torch.Tensor) -> torch.Tensor:
    """Per-sample mean of `entropy_BL` over masked positions (0 where nothing is masked), (B,)."""
    count_B = masked_BL.sum(-1).clamp(min=1)
    return (entropy_BL * masked_BL).sum(-1) / count_B


@torch.no_grad()
def sample(
    model: MaskedGenerator,
    condition: Condition,
    uncondition: Condition | None,
    *,
    num_steps: int,
    cfg_scale: float,
    gumbel_temperature_initial: float,
    generator: torch.Generator,
    record: bool = False,
    token_temperature: TokenTemperature | None = None,
    temperature: float = 1.0,
    module: nn.Module | None = None,
) -> SampleResult:
    """Sample one image per condition row. `uncondition` (same batch size) enables CFG. `temperature` divides the
    guided logits of every draw (1.0 = ALGORITHM.md's softmax); the router's per-token temperatures apply on top.
    `module` replaces the model's transformer in every forward (see maskfocus.compiled)."""
    batch = len(condition)
    num_tokens = model.grid_size[0] * model.grid_size[1]
    if num_steps > num_tokens:
        raise ConfigError(
            f"{num_steps} sampling steps (sampler.num_steps, or rollout.num_steps for the training rollouts) cannot "
            f"exceed the number of image tokens ({num_tokens})"
        )
    device = model.device
    counts = mask_schedule(num_tokens, num_steps)
    tokens_BL = torch.full((batch, num_tokens), model.mask_token_id, dtype=torch.long, device=device)
    trace: dict[str, list[torch.Tensor]] = {"masks": [], "x0": [], "entropy": [], "routes": []}
    for step in range(num_steps):
        masked_BL = tokens_BL == model.mask_token_id
        logits_BLV = guided_logits(model, tokens_BL, condition, uncondition, cfg_scale, step, num_steps, module)
        if temperature != 1.0:
            logits_BLV = logits_BLV / temperature
        entropy_BL = token_entropy(logits_BLV)
        entropy_B = masked_mean(entropy_BL, masked_BL)
        routes_B = torch.zeros(batch, dtype=torch.bool, device=device)
        if token_temperature is not None:
            temperature_BL, routes_B = token_temperature(step, entropy_B, entropy_BL, masked_BL)
            if temperature_BL is not None:  # in the logits' dtype, should a model give half-precision logits
                logits_BLV = logits_BLV / temperature_BL.to(logits_BLV.dtype).unsqueeze(-1)
        log_probs_BLV = torch.log_softmax(logits_BLV, dim=-1)
        drawn_BL = (log_probs_BLV + _gumbel(log_probs_BLV.shape, generator, device)).argmax(-1)
        x0_BL = torch.where(masked_BL, drawn_BL, tokens_BL)
        if record:
            trace["masks"].append(masked_BL)
            trace["x0"].append(x0_BL)
            trace["entropy"].append(entropy_B)
            trace["routes"].append(routes_B)
        tokens_BL = _remask(
            x0_BL,
            masked_BL,
            log_probs_BLV,
            counts[step + 1],
            step,
            num_steps,
            gumbel_temperature_initial,
            generator,
            model.mask_token_id,
        )
    if not record:
        return SampleResult(tokens_BL=tokens_BL)
    stacked = {key: torch.stack(values, dim=1) for key, values in trace.items()}
    return SampleResult(tokens_BL, stacked["masks"], stacked["x0"], stacked["entropy"], stacked["routes"])


def _remask(
    x0_BL: torch.Tensor,
    masked_BL: torch.Tensor,
    log_probs_BLV: torch.Tensor,
    num_remasked: int,
    step: int,
    num_steps: int,
    tau_initial: float,
    generator: torch.Generator,
    mask_token_id: int,
) -> torch.Tensor:
    """Put the `num_remasked` least confident newly drawn tokens back to mask; known tokens stay."""
    if num_remasked == 0:
        return x0_BL
    log_p_BL = log_probs_BLV.gather(-1, x0_BL.clamp(max=log_probs_BLV.shape[-1] - 1).unsqueeze(-1)).squeeze(-1)
    tau = gumbel_temperature(step, num_steps, tau_initial)
    confidence_BL = log_p_BL + tau * _gumbel(log_p_BL.shape, generator, x0_BL.device)
    confidence_BL = confidence_BL.masked_fill(~masked_BL, float("inf"))
    lowest_BN = confidence_BL.topk(num_remasked, dim=-1, largest=False).indices
    remask_BL = torch.zeros_like(masked_BL).scatter_(-1, lowest_BN, True)
    return x0_BL.masked_fill(remask_BL, mask_token_id)


def check_negative_prompt(model: MaskedGenerator, sampler: SamplerConfig) -> None:
    """The negative prompt CFG encodes holds only words the model knows (an unknown one would be dropped without a
    word); checked once where a model is loaded to sample, with the error named as the setting."""
    if sampler.negative_prompt and sampler.cfg_scale != 1.0:
        try:
            model.check_prompts([sampler.negative_prompt])
        except ValueError as error:  # UnknownWordError
            raise type(error)(f"sampler.negative_prompt: {error}") from None


def sample_prompts(
    model: MaskedGenerator,
    prompts: list[str],
    *,
    num_steps: int,
    cfg_scale: float,
    gumbel_temperature_initial: float,
    generator: torch.Generator,
    negative_prompt: str = "",
    record: bool = False,
    token_temperature: TokenTemperature | None = None,
    temperature: float = 1.0,
    module: nn.Module | None = None,
) -> SampleResult:
    """Encode prompts (and the negative prompt for CFG when cfg_scale != 1) and sample one image each."""
    condition = model.encode_prompts(prompts)
    uncondition = None
    if cfg_scale != 1.0:
        uncondition = model.encode_prompts([negative_prompt]).repeat_interleave(len(prompts))
    return sample(
        model,
        condition,
        uncondition,
        num_steps=num_steps,
        cfg_scale=cfg_scale,
        gumbel_temperature_initial=gumbel_temperature_initial,
        generator=generator,
        record=record,
        token_temperature=token_temperature,
        temperature=temperature,
        module=module,
    )


def sample_with_config(
    model: MaskedGenerator,
    prompts: list[str],
    sampler: SamplerConfig,
    generator: torch.Generator,
    record: bool = False,
    token_temperature: TokenTemperature | None = None,
) -> SampleResult:
    """`sample_prompts` with T, CFG scale, tau_0, the draw temperature and the negative prompt of a SamplerConfig,
    through the compiled copy of the transformer when `sampler.compile` is set."""
    return sample_prompts(
        model,
        prompts,
        num_steps=sampler.num_steps,
        cfg_scale=sampler.cfg_scale,
        gumbel_temperature_initial=sampler.gumbel_temperature,
        negative_prompt=sampler.negative_prompt,
        generator=generator,
        record=record,
        token_temperature=token_temperature,
        temperature=sampler.temperature,
        module=sampling_module(model) if sampler.compile else None,
    )


def sample_images_in_batches(
    model: MaskedGenerator, prompts: list[str], sampler: SamplerConfig, generator: torch.Generator
) -> np.ndarray:
    """uint8 images (B, H, W, 3) of `prompts`, sampled `sampler.batch_size` at a time (one batch of 100,000 asked for
    26 GB at once) from one random stream, so that a single batch draws what one call would."""
    from tqdm import tqdm

    from maskfocus.images import to_uint8

    starts = range(0, len(prompts), sampler.batch_size)
    batches = []
    for start in tqdm(starts, desc="sample", unit="batch", disable=len(starts) == 1):
        result = sample_with_config(model, prompts[start : start + sampler.batch_size], sampler, generator)
        batches.append(to_uint8(model.decode(result.tokens_BL)))
    return np.concatenate(batches)
