"""Training strategies (paper §3.3, Table 3, Fig. 6) as data: which set and which reward each stage uses.

Every strategy has the same two DVC stages, ``stage1`` then ``stage2``, each with its checkpoint as an out.
A stage that a strategy does not need is a *pass-through*: it hard-links (or copies) its input model into
its checkpoint dir and writes ``medssr_passthrough.json`` there, so DVC gets its out, ``stage2`` and the
evaluation load it like any other checkpoint, and the marker says it was never trained.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

from medssr.config import ConfigError

DataKind = Literal["synthetic", "real", "mixed"]
RewardKind = Literal["majority", "gold", "online_vote"]

STAGES = ("stage1", "stage2")


class StagePlan(NamedTuple):
    """What one stage trains on: a dataset kind and a reward, or ``(None, None)`` for a pass-through."""

    data: DataKind | None
    reward: RewardKind | None


_PASS = StagePlan(None, None)

_PLANS: dict[str, dict[str, StagePlan]] = {
    # MedSSR: self-supervised on offline-voted synthetic questions, then supervised on real ones.
    "two_stage": {"stage1": StagePlan("synthetic", "majority"), "stage2": StagePlan("real", "gold")},
    # Fully-supervised GRPO baseline: real data only.
    "supervised": {"stage1": _PASS, "stage2": StagePlan("real", "gold")},
    # Table 3 "One-stage": synthetic and real shuffled together, each row keeps its own reward target.
    "one_stage": {"stage1": StagePlan("mixed", "majority"), "stage2": _PASS},
    # Table 3 "Reverse": supervised first, self-supervised second.
    "reverse": {"stage1": StagePlan("real", "gold"), "stage2": StagePlan("synthetic", "majority")},
    # Fig. 6 (a): TTRL-style online vote over the current rollouts, the collapse demonstration.
    "online_vote": {"stage1": StagePlan("synthetic", "online_vote"), "stage2": StagePlan("real", "gold")},
}

STRATEGIES = tuple(_PLANS)


def plan(strategy: str) -> dict[str, StagePlan]:
    """The per-stage plan of ``train.strategy``; unknown names are a ConfigError listing the known ones."""
    if strategy not in _PLANS:
        raise ConfigError(f"train.strategy: unknown strategy {strategy!r} (known: {', '.join(STRATEGIES)})")
    return dict(_PLANS[strategy])


def stage_plan(strategy: str, stage: str) -> StagePlan:
    """The plan of one stage; ``stage`` must be 'stage1' or 'stage2'."""
    if stage not in STAGES:
        raise ConfigError(f"stage: expected one of {', '.join(STAGES)}, got {stage!r}")
    return plan(strategy)[stage]


def backend_problem(strategy: str, backend: str) -> str | None:
    """Why ``train.backend`` cannot run ``train.strategy`` (None if it can): OpenRLHF scores one rollout at a time, so
    no online vote. medssr.config checks this when params are loaded."""
    uses_online = any(p.reward == "online_vote" for p in plan(strategy).values())
    if uses_online and backend == "openrlhf":
        return (f"train.strategy: {strategy!r} needs a reward that sees the whole group of rollouts, but train.backend "
                "'openrlhf' calls its reward function one sample at a time; use train.backend: trl for this ablation")
    return None


def check_backend(strategy: str, backend: str) -> None:
    """``backend_problem`` as a ConfigError (params built in code, not loaded from a file)."""
    if problem := backend_problem(strategy, backend):
        raise ConfigError(problem)
