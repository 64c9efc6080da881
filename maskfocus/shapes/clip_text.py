"""The text tower of an open_clip CLIP as a transformers CLIPTextModelWithProjection, the text encoder format of
the aMUSEd and Meissonic folders.

aMUSEd conditions its transformer on a frozen CLIP text encoder; the shipped shapes generator trains its own from
scratch, and that one never learns colour binding, while the tiny shapes CLIP does (benchmarks/RESULTS.md,
eleventh session). Converting the CLIP's text tower lets a generator be conditioned on it.

open_clip's text transformer is the original CLIP layout: fused q/k/v input projection, pre-norm residual blocks,
a causal mask, a final LayerNorm, and a (width, embed_dim) projection applied as x @ P; transformers' CLIP splits
q/k/v and stores the projection as a Linear (P transposed). Only the eos pooling of the original (the state at the
first end-of-text token) has a transformers counterpart.
"""

from __future__ import annotations

import torch
from transformers import CLIPTextConfig, CLIPTextModelWithProjection

ACTIVATIONS = {torch.nn.GELU: "gelu", torch.nn.SiLU: "silu"}
"""open_clip's MLP activation classes and their transformers `hidden_act` names (QuickGELU is open_clip's own)."""


def text_config(clip: torch.nn.Module, pad_id: int, bos_id: int, eos_id: int) -> CLIPTextConfig:
    """A CLIPTextConfig with the sizes of `clip`'s text tower."""
    pool = getattr(clip, "text_pool_type", "eos")
    highest_id = clip.token_embedding.num_embeddings - 1
    if pool not in ("eos", "argmax") or (pool == "argmax" and eos_id != highest_id):
        # open_clip's argmax pools at the highest token id, transformers' CLIP at the first eos: the same only when
        # eos is the highest id (OpenAI's vocabulary); else the converted tower would silently pool elsewhere
        raise ValueError(
            f"only eos pooling converts to transformers' CLIP (argmax only with eos the highest id, {highest_id}; "
            f"eos is {eos_id}), got {pool!r}"
        )
    if eos_id == 2 and eos_id != highest_id:  # transformers' CLIP then falls back to argmax pooling (legacy configs)
        raise ValueError(
            f"eos id 2 converts to transformers' CLIP only as the highest id ({highest_id}): with eos_token_id 2 it "
            "pools at the highest token id, not at eos; give the tokenizer another eos id"
        )
    blocks = clip.transformer.resblocks
    activation = type(blocks[0].mlp.gelu)
    if activation not in ACTIVATIONS:
        raise ValueError(f"no transformers hidden_act for open_clip's {activation.__name__}")
    context, width = clip.positional_embedding.shape
    return CLIPTextConfig(
        vocab_size=clip.token_embedding.num_embeddings,
        hidden_size=width,
        intermediate_size=blocks[0].mlp.c_fc.out_features,
        num_hidden_layers=len(blocks),
        num_attention_heads=blocks[0].attn.num_heads,
        max_position_embeddings=context,
        projection_dim=clip.text_projection.shape[1],
        hidden_act=ACTIVATIONS[activation],
        layer_norm_eps=blocks[0].ln_1.eps,
        pad_token_id=pad_id,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
    )


def converted_state_dict(clip: torch.nn.Module) -> dict[str, torch.Tensor]:
    """`clip`'s text-tower weights under CLIPTextModelWithProjection's names."""
    source = {name: value for name, value in clip.state_dict().items() if not name.startswith("visual.")}
    target = {
        "text_model.embeddings.token_embedding.weight": source["token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": source["positional_embedding"],
        "text_model.final_layer_norm.weight": source["ln_final.weight"],
        "text_model.final_layer_norm.bias": source["ln_final.bias"],
        "text_projection.weight": source["text_projection"].T.contiguous(),
    }
    for index in range(len(clip.transformer.resblocks)):
        ours, theirs = f"text_model.encoder.layers.{index}.", f"transformer.resblocks.{index}."
        for kind in ("weight", "bias"):
            for q_k_v, chunk in zip(("q", "k", "v"), source[f"{theirs}attn.in_proj_{kind}"].chunk(3), strict=True):
                target[f"{ours}self_attn.{q_k_v}_proj.{kind}"] = chunk.contiguous()
            pairs = {"self_attn.out_proj": "attn.out_proj", "layer_norm1": "ln_1", "layer_norm2": "ln_2"}
            pairs |= {"mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
            for name_ours, name_theirs in pairs.items():
                target[f"{ours}{name_ours}.{kind}"] = source[f"{theirs}{name_theirs}.{kind}"]
    return target


def text_encoder_from_open_clip(
    clip: torch.nn.Module, pad_id: int, bos_id: int, eos_id: int
) -> CLIPTextModelWithProjection:
    """`clip`'s text tower as a CLIPTextModelWithProjection (float32, eval mode); the special ids are the
    tokenizer's, `eos_id` the one the CLIP pools at."""
    encoder = CLIPTextModelWithProjection(text_config(clip, pad_id, bos_id, eos_id))
    missing, unexpected = encoder.load_state_dict(converted_state_dict(clip), strict=False)
    missing = [name for name in missing if not name.endswith("position_ids")]
    if missing or unexpected:
        raise ValueError(f"text tower conversion left weights unmatched: missing {missing}, unexpected {unexpected}")
    return encoder.eval()
