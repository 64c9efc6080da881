"""Rewards: GenEval-style scoring, detectors and image-text scores."""
