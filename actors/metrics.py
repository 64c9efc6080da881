"""Ray dashboard metrics of a run (`ray.util.metrics`, exported to Prometheus by every node's metrics agent).

Each value is recorded in the process that measures it: rollout workers (images per second, weight loads),
reward workers (latency, mean reward), rank 0 of the learner group (step time, weight publishing, loss, KL,
policy version, staleness, dropped batches, how far a stale batch's sampling policy lies from the current one)
and the driver (queue depth, redone batches, iteration time).
Every series carries the tag `run` (the run folder's name). Ray prefixes the names with `ray_` in the
export, and counters get `_total`: `maskfocus_queue_depth` is scraped as `ray_maskfocus_queue_depth`.

Gauges of a process vanish from the export shortly after it exits; counters and histograms are kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ray.util.metrics import Counter, Gauge, Histogram, Metric

SECONDS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0)
VERSIONS = (0.5, 1.5, 2.5, 4.5, 8.5)
"""Staleness buckets: 0, 1, 2, 3-4, 5-8 policy versions, more."""


@dataclass(frozen=True)
class MetricSpec:
    kind: type[Metric]
    description: str
    boundaries: tuple[float, ...] = ()
    """Histogram bucket upper bounds."""
    tag_keys: tuple[str, ...] = ("run",)


PER_WORKER = ("run", "worker")
"""A gauge each worker of a pool sets: one series per worker (its index in the pool), else they overwrite each
other (Ray does not tell the processes of a node apart in what it exports)."""

METRICS: dict[str, MetricSpec] = {
    "maskfocus_rollout_images_per_second": MetricSpec(
        Gauge, "Images per second of a rollout worker's last batch.", tag_keys=PER_WORKER
    ),
    "maskfocus_rollout_images": MetricSpec(Counter, "Images sampled by the rollout workers."),
    "maskfocus_reward_latency_seconds": MetricSpec(Histogram, "Seconds to score one rollout batch.", SECONDS),
    "maskfocus_reward_mean": MetricSpec(
        Gauge, "Mean reward of a reward worker's last scored batch.", tag_keys=PER_WORKER
    ),
    "maskfocus_queue_depth": MetricSpec(
        Gauge,
        "Items waiting in the queue for the learner: TrainBatches (and, briefly, the word to keep waiting that a "
        "worker failure sends).",
    ),
    "maskfocus_policy_version": MetricSpec(Gauge, "Policy version of the learner's newest weights."),
    "maskfocus_staleness": MetricSpec(Histogram, "Policy versions a batch lags the learner.", VERSIONS),
    "maskfocus_dropped_stale": MetricSpec(
        Counter,
        "Batches the learner dropped (older than ray.max_staleness, or queued behind a dropped one); each is redone.",
    ),
    "maskfocus_redone": MetricSpec(Counter, "Iterations redone after a rollout or reward actor failed."),
    "maskfocus_learner_step_seconds": MetricSpec(Histogram, "Seconds of one iteration's policy update.", SECONDS),
    "maskfocus_weight_sync_seconds": MetricSpec(
        Histogram,
        "Seconds to move new weights: stage=publish (learner gathers and puts), stage=load (rollout worker loads).",
        SECONDS,
        ("run", "stage"),
    ),
    "maskfocus_iteration_seconds": MetricSpec(Histogram, "Seconds between two learned iterations.", SECONDS),
    "maskfocus_loss": MetricSpec(Gauge, "Policy loss (loss/total) of the last update."),
    "maskfocus_kl": MetricSpec(Gauge, "KL to the reference (loss/kl) of the last update."),
    "maskfocus_behaviour_log_ratio": MetricSpec(
        Gauge,
        "Mean |log pi_now - log pi_behaviour| per scored token of the last stale batch (grpo.behaviour_weight_cap).",
    ),
}


def run_tag(run_dir: Path, out_dir: str | Path) -> str:
    """The `run` tag of a run's metrics: its folder inside train.out_dir (`ablation/critical_seed0`), so runs of one
    name in different subfolders stay apart; the folder name alone for a folder elsewhere."""
    try:
        return Path(run_dir).resolve().relative_to(Path(out_dir).resolve()).as_posix()
    except ValueError:
        return Path(run_dir).name


class RunMetrics:
    """The metrics one process records for a run; each is registered on its first record."""

    def __init__(self, run: str):
        self.run = run
        self.made: dict[str, Metric] = {}

    def record(self, name: str, value: float, **tags: str) -> None:
        """Gauge: set; counter: add (nothing for value <= 0); histogram: observe."""
        metric = self.made.get(name) or self._make(name)
        tags = {"run": self.run, **tags}
        if isinstance(metric, Gauge):
            metric.set(float(value), tags=tags)
        elif isinstance(metric, Counter):
            if value > 0:
                metric.inc(float(value), tags=tags)
        else:
            metric.observe(float(value), tags=tags)

    def _make(self, name: str) -> Metric:
        spec = METRICS[name]
        if spec.kind is Histogram:
            metric = Histogram(name, spec.description, boundaries=list(spec.boundaries), tag_keys=spec.tag_keys)
        else:
            metric = spec.kind(name, spec.description, tag_keys=spec.tag_keys)
        self.made[name] = metric
        return metric
