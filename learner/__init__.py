"""The Ray Train learner group, installed as ``maskfocus.learner``."""
