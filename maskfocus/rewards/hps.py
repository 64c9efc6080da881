"""HPS v2.1 reward (Wu et al., "Human Preference Score v2", 2023): a human-preference-tuned CLIP.

HPS v2 fine-tunes open_clip's ViT-H-14 (laion2B-s32B-b79K) on human choices between generated images. The
released checkpoint (HPS_v2.1_compressed.pt, {"state_dict": ...}) holds every weight of that architecture, so
scoring needs only the architecture and this file: the reference builds ViT-H-14, loads the state dict, and
scores an (image, prompt) pair as the diagonal of image_features @ text_features.T with unit-norm features,
i.e. their cosine similarity (typically 0.2-0.35). Its preprocessing resizes the longest side to 224 and pads to
a square (`fit="pad"`), OpenAI CLIP mean/std, and its tokenizer is open_clip's for ViT-H-14. ALGORITHM.md
section 5: "HPSv2.1 is the same [as the CLIP score] with HPS weights".
"""

from __future__ import annotations

from maskfocus.rewards.clip_score import ClipScorer

HPS_ARCHITECTURE = "ViT-H-14"
"""The open_clip architecture HPS v2 / v2.1 fine-tunes."""


def load_hps_scorer(
    checkpoint: str,
    model: str = HPS_ARCHITECTURE,
    device: str = "cpu",
    field: str = "model",
    checkpoint_field: str = "checkpoint",
) -> ClipScorer:
    """HPS v2.1 as a ClipScorer: `model` gives the architecture (a name or a local-dir folder), `checkpoint` all
    the weights. The score is cosine(image, prompt) as in the reference; nothing is downloaded."""
    return ClipScorer.load(model, checkpoint, device=device, fit="pad", field=field, checkpoint_field=checkpoint_field)
