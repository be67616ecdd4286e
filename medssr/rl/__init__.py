"""GRPO training: rewards, dataset export, trainer backends (TRL on CPU, OpenRLHF at scale) and strategies."""
