"""The shapes world: a small, fully verifiable text-to-image world (scenes, renderer, prompts, detector)."""
