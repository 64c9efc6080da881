"""The learner's update on one TrainBatch (ALGORITHM.md section 4), in plain torch.

Used as is by the in-process trainer and, with a sharded module and a global token count, by each Ray
Train worker: distribution enters only through `module` (possibly FSDP-wrapped) and `count_tokens`.

Shape legend: B samples, K selected steps, L image tokens, V codebook size.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from maskfocus.behaviour import VersionSnapshots
from maskfocus.compiled import PaddedCompiled
from maskfocus.config import GRPOConfig, OptimConfig, RunConfig
from maskfocus.grpo import build_training_inputs, masked_entropy_mean, policy_loss, token_log_probs
from maskfocus.hardware import wait_for_device
from maskfocus.models.base import Condition, MaskedGenerator
from maskfocus.types import TrainBatch

CountTokens = Callable[[torch.Tensor], float]


def local_token_count(loss_mask_BL: torch.Tensor) -> float:
    return float(loss_mask_BL.sum())


@dataclass
class StepInputs:
    """The training state of one selected step for every sample, fixed before the first update."""

    inputs_BL: torch.Tensor
    loss_mask_BL: torch.Tensor
    steps_B: torch.Tensor
    old_logp_BL: torch.Tensor | None = None
    ref_logp_BL: torch.Tensor | None = None
    behaviour_logp_BL: torch.Tensor | None = None
    """A stale batch's log-probs under the version that sampled it (grpo.behaviour_weight_cap)."""


TOKEN_MEAN_METRICS = frozenset(
    {
        "loss/ratio_mean",
        "loss/clip_fraction",
        "loss/entropy",
        "loss/behaviour_weight_mean",
        "loss/behaviour_capped_fraction",
        "loss/behaviour_abs_log_ratio",
    }
)
"""Metrics that are means over one forward's scored tokens: merged weighted by `loss/scored_tokens`."""


def merge_metrics(records: list[dict[str, float]]) -> dict[str, float]:
    """One record from several (the selected steps of an update, or the ranks of a learner group): the mean of each
    key over the records that have it, the max for `*_max`, the sum of `loss/scored_tokens`, and for
    TOKEN_MEAN_METRICS the mean weighted by each record's scored tokens, so that a record with none (a rank whose
    samples are all invalid) does not pull the mean towards its placeholder (plain mean when no record has any)."""
    merged = {}
    for key in sorted({key for record in records for key in record}):
        having = [record for record in records if key in record]
        values = [record[key] for record in having]
        weights = [record.get("loss/scored_tokens", 0.0) for record in having]
        if key.endswith("_max"):
            merged[key] = max(values)
        elif key == "loss/scored_tokens":
            merged[key] = sum(values)
        elif key in TOKEN_MEAN_METRICS and sum(weights) > 0:
            merged[key] = sum(w * v for w, v in zip(weights, values, strict=True)) / sum(weights)
        else:
            merged[key] = sum(values) / len(values)
    return merged


def optimizer_steps_per_iteration(config: RunConfig) -> int:
    """Optimizer steps of one batch: per pass K (per_step) or one (accumulate), times grpo.epochs passes."""
    num_k = config.rollout_sampler().num_steps if config.selection.strategy == "all" else config.selection.num_steps
    per_pass = num_k if config.grpo.update == "per_step" else 1
    return per_pass * config.grpo.epochs


def schedule_span(config: RunConfig, num_updates: int = 0, iteration: int = 0) -> int:
    """Optimizer steps the learning-rate schedule spans: the `num_updates` already taken before `iteration` (a
    resume), then this config's steps per iteration to its last. A fresh run or a crash-resume gets the configured
    run's length exactly (every iteration takes the same number of steps); a resume that changes K (or T with
    selection.strategy all) still ends the decay at the run's last step."""
    return num_updates + (config.train.num_iterations - iteration) * optimizer_steps_per_iteration(config)


def lr_factor(update: int, total_updates: int, final_lr_fraction: float) -> float:
    """The learning rate of optimizer step `update` (counted from 0) as a fraction of the peak: 1 at the first step,
    falling linearly to `final_lr_fraction` at the last of `total_updates`, and staying there."""
    span = max(1, total_updates - 1)
    return 1.0 - (1.0 - final_lr_fraction) * min(update, span) / span


def make_optimizer(module: nn.Module, optim: OptimConfig, total_updates: int):
    """AdamW with a linear decay from the peak to final_lr_fraction over `total_updates` optimizer steps."""
    optimizer = torch.optim.AdamW(module.parameters(), lr=optim.learning_rate, weight_decay=optim.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda update: lr_factor(update, total_updates, optim.final_lr_fraction)
    )
    return optimizer, schedule


def frozen_copy(module: nn.Module) -> nn.Module:
    """The reference policy: a deep copy with gradients off."""
    return copy.deepcopy(module).eval().requires_grad_(False)


def kept_rows(valid_B: torch.Tensor) -> torch.Tensor:
    """The rows `learning_rows` keeps: the valid ones, or the first one when none is."""
    keep_B = valid_B.clone().bool()
    if not bool(keep_B.any()):
        keep_B[0] = True
    return keep_B


def learning_rows(batch: TrainBatch, steps: list[StepInputs]) -> tuple[TrainBatch, list[StepInputs]]:
    """Only the samples that reach the loss, so the forwards skip the rest; the loss is unchanged.

    An invalid sample (non-finite reward group, or zero-signal group with grpo.drop_zero_groups) has no loss
    token, so it adds nothing to the policy term, the KL or the token count. When none is valid, one sample
    stays (with no loss token), so that every rank of a sharded learner still runs its forward and backward.
    """
    keep_B = kept_rows(batch.valid_B)
    if bool(keep_B.all()):
        return batch, steps
    kept = []
    for step in steps:
        keep = keep_B.to(step.inputs_BL.device)
        kept.append(StepInputs(step.inputs_BL[keep], step.loss_mask_BL[keep], step.steps_B[keep]))
    return batch.rows(keep_B), kept


class PolicyUpdater:
    """GRPO updates of `module` (the generator's transformer, maybe wrapped) on TrainBatches."""

    def __init__(
        self,
        model: MaskedGenerator,
        grpo: GRPOConfig,
        optim: OptimConfig,
        num_sampling_steps: int,
        total_updates: int,
        module: nn.Module | None = None,
        reference: nn.Module | None = None,
        compile: bool = False,
        max_staleness: int = 0,
        compile_backend: Literal["inductor", "aot_eager"] = "inductor",
        temperature: float = 1.0,
    ):
        self.model = model
        self.temperature = temperature
        """The rollouts' sampler.temperature: the policy learned is the one that sampled, softmax(logits / it)."""
        self.grpo = grpo
        self.optim = optim
        self.num_sampling_steps = num_sampling_steps
        self.module = model.trainable_module() if module is None else module
        self.reference = None if grpo.beta == 0 else (frozen_copy(self.module) if reference is None else reference)
        self.optimizer, self.scheduler = make_optimizer(self.module, optim, total_updates)
        self.num_updates = 0
        self.steps_begun = 0
        """Optimizer steps begun in this process (`num_updates` counts those finished, and resumes)."""
        self.policy_forward = PaddedCompiled(self.module, compile_backend) if compile else self.module
        """What the learner's forwards call: the module, or a compiled copy sharing its parameters."""
        self.reference_forward = self.reference
        if compile and self.reference is not None:
            self.reference_forward = PaddedCompiled(self.reference, compile_backend)
        self.snapshots = None
        """The weights of the last max_staleness + 1 versions, when stale batches are corrected."""
        if grpo.behaviour_weight_cap is not None and max_staleness > 0:
            self.snapshots = VersionSnapshots(self.module, keep=max_staleness + 1)

    def resume_schedule(self, num_updates: int) -> None:
        """Continue the learning-rate schedule after the `num_updates` optimizer steps of a run being resumed (its
        optimizer state is loaded first). Loading that state also restored the saved weight decay: the config's,
        which a resume may change (`--set optim.weight_decay=...`, written to config.yaml), is put back."""
        for group in self.optimizer.param_groups:
            group["weight_decay"] = self.optim.weight_decay
        for _ in range(self.num_updates, num_updates):
            self._advance_schedule()
        self.num_updates = num_updates

    def _advance_schedule(self) -> None:
        """One scheduler step. torch warns when it comes before any optimizer step (a resume, or a skipped first
        step); here that is intended, so the warning is silenced."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
            self.scheduler.step()

    def _logp(self, step: StepInputs, tokens_BL: torch.Tensor, condition: Condition, module: nn.Module):
        logits_BLV = self.model.logits(step.inputs_BL, condition, step.steps_B, self.num_sampling_steps, module=module)
        if self.temperature != 1.0:
            logits_BLV = logits_BLV / self.temperature
        return token_log_probs(logits_BLV, tokens_BL), logits_BLV

    def prepare(self, batch: TrainBatch, generator: torch.Generator) -> list[StepInputs]:
        """Build each selected step's input and freeze the old (and reference) log-probs."""
        steps = []
        for k in range(batch.steps_BK.shape[1]):
            trajectory_mask = None if batch.masks_BKL is None else batch.masks_BKL[:, k]
            remask = "trajectory" if self.grpo.tokens == "newly_unmasked" else self.grpo.remask
            inputs_BL, mask_BL = build_training_inputs(
                batch.tokens_BL, batch.num_masked_BK[:, k], self.model.mask_token_id, generator, remask, trajectory_mask
            )
            if batch.scored_BKL is not None:
                mask_BL = batch.scored_BKL[:, k]
            mask_BL = mask_BL & batch.valid_B.to(mask_BL.device).unsqueeze(-1)
            steps.append(StepInputs(inputs_BL, mask_BL, batch.steps_BK[:, k]))
        return steps

    def _steps_before_first_update(self, num_steps: int) -> int:
        """How many selected steps are scored before the first optimizer step (the policy is still the old one)."""
        return 1 if self.grpo.update == "per_step" else num_steps

    @torch.no_grad()
    def _freeze_behaviour_log_probs(
        self, steps: list[StepInputs], tokens_BL: torch.Tensor, condition: Condition, version: int
    ) -> None:
        """Each step's log-probs under the weights of policy `version` (swapped in for these forwards)."""
        assert self.snapshots is not None
        with self.snapshots.weights_of(version):
            for step in steps:
                step.behaviour_logp_BL = self._logp(step, tokens_BL, condition, self.policy_forward)[0]

    @torch.no_grad()
    def _freeze_log_probs(self, steps: list[StepInputs], tokens_BL: torch.Tensor, condition: Condition) -> None:
        """Old log-probs of the steps scored after an optimizer step, and every reference log-prob. The steps
        scored before the first optimizer step take their old log-probs from their own training forward
        (`_step_loss`): the same policy, so one forward fewer each and a first ratio of exactly 1."""
        before_update = self._steps_before_first_update(len(steps))
        for index, step in enumerate(steps):
            if index >= before_update:
                step.old_logp_BL = self._logp(step, tokens_BL, condition, self.policy_forward)[0]
            if self.reference_forward is not None:
                step.ref_logp_BL = self._logp(step, tokens_BL, condition, self.reference_forward)[0]

    def _step_loss(self, step: StepInputs, batch: TrainBatch, condition: Condition, count_tokens: CountTokens):
        """The loss of one selected step, its metrics and its (global) number of scored tokens."""
        logp_BL, logits_BLV = self._logp(step, batch.tokens_BL, condition, self.policy_forward)
        if step.old_logp_BL is None:
            step.old_logp_BL = logp_BL.detach()
        num_tokens = count_tokens(step.loss_mask_BL)
        loss, metrics = policy_loss(
            logp_BL,
            step.old_logp_BL,
            batch.advantages_B.to(logp_BL.device),
            step.loss_mask_BL,
            clip_eps=self.grpo.clip_eps,
            beta=self.grpo.beta,
            ref_logp_BL=step.ref_logp_BL,
            num_tokens=num_tokens if num_tokens > 0 else 1.0,  # a rank's share of a global count may be < 1
            behaviour_logp_BL=step.behaviour_logp_BL,
            behaviour_cap=self.grpo.behaviour_weight_cap or 1.0,
        )
        metrics["loss/entropy"] = masked_entropy_mean(logits_BLV.detach(), step.loss_mask_BL)
        metrics["loss/scored_tokens"] = local_token_count(step.loss_mask_BL)
        return loss, metrics, num_tokens

    def trained_parameters(self):
        """What the optimizer moves and the gradient clip measures (a subclass may add modules)."""
        return self.module.parameters()

    def _optimizer_step(self, has_tokens: bool) -> tuple[float, bool]:
        """Clip and apply the gradients, unless they are non-finite or no token was scored since the last step
        (then AdamW's momentum and weight decay would still move the weights). Both tests give the same answer on
        every rank: the gradient norm and the token count are global. The schedule advances either way."""
        self.steps_begun += 1  # before the step can move anything: a failure inside it may leave a part-way state
        grad_norm = torch.nn.utils.clip_grad_norm_(self.trained_parameters(), self.optim.grad_clip)
        grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
        applied = has_tokens and math.isfinite(grad_norm)
        if applied:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._advance_schedule()
        self.num_updates += 1
        return grad_norm, applied

    def update(
        self,
        batch: TrainBatch,
        generator: torch.Generator,
        count_tokens: CountTokens = local_token_count,
        version: int | None = None,
    ) -> dict[str, float]:
        """One rollout's worth of updates: grpo.epochs passes of K optimizer steps (per_step) or one (accumulate).

        `version`: the policy version of the weights now (the Ray learner's; None in-process, where every batch is
        on-policy). With stale-batch correction on, the current weights are kept as that version, and a batch
        sampled by an earlier one gets behaviour weights (grpo.behaviour_weight_cap)."""
        start = time.perf_counter()
        # Every learner forward (old, reference and new log-probs) runs in eval mode, dropout off, as RL fine-tuning
        # usually does: a dropout mask drawn per forward would make the first ratio differ from 1 and the KL differ
        # from 0 with the policy unchanged. (The shipped and the reference models have no dropout.)
        self.module.eval()
        steps = self.prepare(batch, generator)
        batch, steps = learning_rows(batch, steps)
        condition = self.model.encode_prompts(batch.prompts_B)
        behaviour = self._behaviour_version(batch, version)
        if behaviour is not None:
            self._freeze_behaviour_log_probs(steps, batch.tokens_BL, condition, behaviour)
        self._freeze_log_probs(steps, batch.tokens_BL, condition)
        self.optimizer.zero_grad(set_to_none=True)
        records: list[dict[str, float]] = []
        for _ in range(self.grpo.epochs):
            records += self._one_pass(steps, batch, condition, count_tokens)
        summary = self._summarize(records, start)
        if self.snapshots is not None and version is not None and batch.policy_version < version:
            summary["sync/behaviour_missing"] = float(behaviour is None)
        return summary

    def _behaviour_version(self, batch: TrainBatch, version: int | None) -> int | None:
        """The version whose weights score this batch's behaviour log-probs: the one that sampled it, when the batch
        is stale and its weights are kept; else None (no correction). Keeps the current weights as `version`."""
        if self.snapshots is None or version is None:
            return None
        self.snapshots.record(version)
        stale = batch.policy_version < version
        return batch.policy_version if stale and batch.policy_version in self.snapshots else None

    def _one_pass(
        self, steps: list[StepInputs], batch: TrainBatch, condition: Condition, count_tokens: CountTokens
    ) -> list[dict[str, float]]:
        records = []
        tokens_since_step = 0.0
        for index, step in enumerate(steps):
            loss, metrics, num_tokens = self._step_loss(step, batch, condition, count_tokens)
            tokens_since_step += num_tokens
            # Back-propagate even a non-finite loss: every rank of a sharded learner must join the same gradient
            # collectives, and the non-finite gradient norm that results skips the optimizer step on all of them.
            loss.backward()
            if self.grpo.update == "per_step" or index == len(steps) - 1:
                metrics["optim/lr"] = self.optimizer.param_groups[0]["lr"]  # the rate this step applies
                metrics["loss/grad_norm"], applied = self._optimizer_step(tokens_since_step > 0)
                metrics["loss/skipped_steps"] = float(not applied)
                # From the global gradient norm, not this rank's loss: a rank (or a batch) with no scored token has
                # a zero loss even when the weights are NaN, but its gradient is NaN all the same. Merged: the
                # fraction of the optimizer steps, the same on every rank.
                metrics["loss/skipped_nonfinite"] = float(not math.isfinite(metrics["loss/grad_norm"]))
                tokens_since_step = 0.0
            records.append(metrics)
        return records

    def _summarize(self, records: list[dict[str, float]], start: float) -> dict[str, float]:
        summary = merge_metrics(records)
        summary["loss/skipped_steps"] = sum(r.get("loss/skipped_steps", 0.0) for r in records)
        wait_for_device(self.model.device)  # the last optimizer step may still run on a GPU
        summary["perf/learner_seconds"] = time.perf_counter() - start
        summary["perf/optimizer_steps"] = float(sum("loss/grad_norm" in r for r in records))
        # merged: the mean rate of this update's optimizer steps (get_last_lr() after them is the next update's)
        summary.setdefault("optim/lr", self.scheduler.get_last_lr()[0])
        return summary
