"""maskfocus: RL post-training (GRPO) of masked generative image models, focused on critical steps.

Kept light on purpose: importing a submodule (``maskfocus.grpo``) must not pull in models or Ray.
"""

__version__ = "0.1.0"
