"""Offline majority-vote pseudo-labels (paper §3.3, Eq. 3): pure voting in ``vote``, the stage in ``run``."""

from medssr.label.vote import VoteResult, count_statuses, majority_vote, tie_break

__all__ = ["VoteResult", "count_statuses", "majority_vote", "tie_break"]
