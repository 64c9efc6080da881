"""Ray actors (rollout and reward workers): thin wrappers over ``maskfocus``, installed as ``maskfocus.actors``."""
