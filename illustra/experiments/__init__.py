"""Experiment plans: one-factor-at-a-time runs of the fine-tuning recipe, their analysis and report."""
