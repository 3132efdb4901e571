"""Evaluation: sharded inference over a data set, metrics (top-k, R@k, kNN, linear probe) and plots."""
