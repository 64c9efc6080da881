"""Meissonic adapter: a VQModel, a CLIP text encoder (CLIP-H in the release) and the transformer whose code
ships inside the checkpoint folder (`transformer/transformer.py`), loaded only when the config trusts it.

Inputs as the reference pipeline (github.com/viiika/Meissonic, src/pipeline.py) builds them:
- micro-conditions (width, height, crop 0 0, aesthetic 6) at the generated resolution (1024 by default);
- `pooled_projections` = the CLIP text projection, `encoder_hidden_states` = the penultimate hidden layer,
  prompts padded to 77 tokens;
- `txt_ids` = zeros (S, 3); `img_ids` (N, 3) = (0, row, column) over the transformer's internal grid, which is
  half the token grid per side when the transformer downsamples (the released 1024-px model) - what the
  pipeline's `_prepare_latent_image_ids` produces in the cases it supports;
- `timestep` = the scheduler's step index, which counts down: T-1 at the first step, 0 at the last (the
  transformer multiplies it by 1000 itself). The release's training script fed `mask ratio * 1000` instead; RL
  follows the pipeline, the convention the released weights sample with.
At a resolution other than 1024 the reference pipeline's `img_ids` do not fit the downsampling transformer (it
fails); this adapter gives the halved grid's ids and runs, on settings the release never ran.
CFG with a negative prompt is the sampler's (`sampler.negative_prompt`, `sampler.cfg_scale`).

Shape legend: B samples, L image tokens (h*w), V codebook size, S text tokens, N image positions.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path

import torch
from torch import nn

from maskfocus.models.base import Condition, ModelLoadError
from maskfocus.models.image_codec import native_resolution
from maskfocus.models.loading import (
    check_codebooks,
    check_generator_folder,
    check_text_parts,
    folder_hint,
    load_text_encoder,
    load_tokenizer,
    load_vqvae,
    load_weights,
    mask_token_id,
    read_config,
    torch_dtype,
    vq_pixel_range,
)
from maskfocus.models.vq_text import VQTextGenerator, step_tensor

CODE_FILE = "transformer.py"


def check_checkpoint_code(folder: Path, trust_checkpoint_code: bool) -> Path:
    """The folder ships its transformer's code (transformer/transformer.py) and the config trusts it: cheap, so
    `maskfocus train` checks it before a run starts. Returns the code file."""
    path = folder / "transformer" / CODE_FILE
    if not path.is_file():  # an aMUSEd folder was named as one by check_generator_folder
        raise ModelLoadError(
            f"{folder} has no transformer/{CODE_FILE}: copy the Transformer2DModel source of the Meissonic release "
            "(src/transformer.py of github.com/viiika/Meissonic) there"
        )
    if not trust_checkpoint_code:
        raise ModelLoadError(
            f"{folder} is a Meissonic folder: its transformer is Python code shipped with the checkpoint ({path}), "
            "and loading it runs that code. If you trust this folder (e.g. the MeissonFlow/Meissonic release), "
            "set `model.trust_checkpoint_code: true` in the run config."
        )
    return path


def load_checkpoint_class(folder: Path, trust_checkpoint_code: bool) -> type:
    """The transformer class defined in `<folder>/transformer/transformer.py`, named by its config's `_class_name`.

    Importing that file runs arbitrary code from the checkpoint, so it happens only when the run config says
    `model.trust_checkpoint_code: true`."""
    path = check_checkpoint_code(folder, trust_checkpoint_code)
    class_name = read_config(folder, "transformer").get("_class_name")
    name = "maskfocus_checkpoint_code_" + hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # decorators and deepcopy look classes up through their module
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        del sys.modules[name]
        raise ModelLoadError(f"cannot import {path}: {type(error).__name__}: {error}") from None
    cls = getattr(module, str(class_name), None)
    if cls is None or not hasattr(cls, "from_pretrained"):
        raise ModelLoadError(
            f"{path} defines no loadable class {class_name!r} (transformer/config.json `_class_name`; "
            "it must be a diffusers ModelMixin with from_pretrained)"
        )
    return cls


def add_missing_head_dim(module: nn.Module) -> int:
    """Give each legacy diffusers `Attention` inside `module` the `head_dim` attribute it lacks; returns how many.

    The released transformer.py builds `Attention(..., processor=FluxAttnProcessor2_0())`. In recent diffusers
    (0.42.1 here) that name is a deprecated alias whose `__new__` returns `transformer_flux.FluxAttnProcessor`,
    which reshapes by `attn.head_dim` - an attribute of the new `FluxAttention`, not of the legacy `Attention`
    - so the first forward raised AttributeError although loading succeeded. `inner_dim // heads` is the
    `dim_head` the legacy class was built with; older processors never read the attribute."""
    from diffusers.models.attention_processor import Attention

    patched = [m for m in module.modules() if isinstance(m, Attention) and not hasattr(m, "head_dim")]
    for attention in patched:
        attention.head_dim = attention.inner_dim // attention.heads
    return len(patched)


def image_position_ids(grid_size: tuple[int, int], downsample: bool, device: torch.device) -> torch.Tensor:
    """(N, 3) float32: (0, row, column) of each position of the transformer's internal grid."""
    h, w = (grid_size[0] // 2, grid_size[1] // 2) if downsample else grid_size
    ids = torch.zeros(h, w, 3, device=device)
    ids[..., 1] = torch.arange(h, device=device)[:, None]
    ids[..., 2] = torch.arange(w, device=device)[None, :]
    return ids.reshape(h * w, 3)


def text_position_ids(num_text_tokens: int, device: torch.device) -> torch.Tensor:
    """(S, 3) zeros: text tokens carry no position in Meissonic's rotary embedding."""
    return torch.zeros(num_text_tokens, 3, device=device)


def meissonic_timestep(step: int | torch.Tensor, num_steps: int, batch: int, device: torch.device) -> torch.Tensor:
    """(B,) long: the pipeline's scheduler timestep of step i, T-1-i (arange(T).flip(0))."""
    return num_steps - 1 - step_tensor(step, batch, device)


def timestep_as_computed_in(timestep_B: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The timestep to feed so that the transformer's `timestep.to(module dtype) * 1000` comes out as a module in
    `dtype` computes it. In bfloat16, 63 * 1000 rounds to 62976, so a float32 learner fed the plain index would
    condition on other timesteps (57 of 64 differ) than the bfloat16 rollouts it scores. Float32: unchanged."""
    if dtype == torch.float32:
        return timestep_B
    return (timestep_B.to(dtype) * 1000).float() / 1000


class MeissonicGenerator(VQTextGenerator):
    """MaskedGenerator over a Meissonic folder (see maskfocus.models.base for the interface)."""

    PER_SAMPLE_INPUTS = ("hidden_states", "micro_conds", "pooled_projections", "encoder_hidden_states", "timestep")
    """`logits`' keyword inputs with a row per sample; img_ids (N, 3) and txt_ids (S, 3) serve the whole batch."""

    def __init__(self, *args, downsample: bool, timestep_dtype: torch.dtype = torch.float32, **kwargs):
        super().__init__(*args, **kwargs)
        self.downsample = downsample
        self.timestep_dtype = timestep_dtype
        """The dtype whose rounding of timestep * 1000 every copy of the model reproduces: the rollouts'."""
        if downsample and (self.grid_size[0] % 2 or self.grid_size[1] % 2):
            raise ModelLoadError(f"a downsampling Meissonic transformer needs an even token grid, got {self.grid_size}")
        self.img_ids = image_position_ids(self.grid_size, downsample, self.device)

    @classmethod
    def from_folder(
        cls,
        path: str | Path,
        device: str = "cpu",
        dtype: str = "float32",
        resolution: int | None = None,
        text_encoder: str | None = None,
        trust_checkpoint_code: bool = False,
        timestep_dtype: str | None = None,
    ) -> MeissonicGenerator:
        """Load transformer and text encoder in `dtype` (the VQ stays float32); `resolution` in pixels (None =
        `native_resolution`); `text_encoder` replaces text_encoder/ (the reference inference uses the original
        CLIP-ViT-H-14); `timestep_dtype` (None: `dtype`) is the rollouts' dtype, whose timestep rounding a float32
        learner copy reproduces."""
        folder = check_generator_folder(path, "meissonic")
        hint = folder_hint(path)
        check_codebooks(folder)
        transformer_class = load_checkpoint_class(folder, trust_checkpoint_code)
        weights_dtype = torch_dtype(dtype)
        vqvae = load_vqvae(folder, hint)
        load = transformer_class.from_pretrained
        transformer = load_weights(load, folder, "transformer", hint, torch_dtype=weights_dtype)
        add_missing_head_dim(transformer)
        encoder = load_text_encoder(folder, hint, weights_dtype, text_encoder)
        tokenizer = load_tokenizer(folder, hint)
        check_text_parts(folder, tokenizer, encoder)
        _check_conditioning(folder, transformer.config, encoder.config)
        codebook = int(transformer.config.codebook_size)
        model = cls(
            vqvae,
            transformer,
            encoder,
            tokenizer,
            mask_token_id=mask_token_id(folder, codebook, int(transformer.config.vocab_size)),
            codebook_size=codebook,
            image_size=resolution or native_resolution("meissonic", transformer.config, vqvae.config),
            pixel_range=vq_pixel_range(folder),
            device=device,
            downsample=bool(getattr(transformer.config, "downsample", False)),
            timestep_dtype=torch_dtype(timestep_dtype or dtype),
        )
        smoke_forward(model, folder)
        return model

    def logits(
        self,
        tokens_BL: torch.Tensor,
        condition: Condition,
        step: int | torch.Tensor = 0,
        num_steps: int = 1,
        module: nn.Module | None = None,
    ) -> torch.Tensor:
        """(B, L, V) float32; `module` replaces the transformer (a frozen reference, an FSDP-wrapped one)."""
        module = self.transformer if module is None else module
        batch = tokens_BL.shape[0]
        hidden, pooled, micro = self._inputs(module, condition)
        output = module(
            hidden_states=tokens_BL.view(batch, *self.grid_size),
            micro_conds=micro,
            pooled_projections=pooled,
            encoder_hidden_states=hidden,
            img_ids=self.img_ids,
            txt_ids=text_position_ids(hidden.shape[1], self.device),
            timestep=timestep_as_computed_in(
                meissonic_timestep(step, num_steps, batch, self.device), self.timestep_dtype
            ),
        )
        return self._to_logits(_output_tensor(output))

    def blocks(self) -> list[nn.Module]:
        """The dual-stream then single-stream transformer blocks, for FSDP2's per-block `fully_shard`; for a
        UVit2D-style class in this folder format (shapes/positional_uvit.py), its down block, middle layers and up
        block, as aMUSEd's (FSDP2 refused a Ray run of such a folder: no blocks)."""
        model = self.transformer
        names = ("transformer_blocks", "single_transformer_blocks")
        blocks = [block for name in names for block in getattr(model, name, [])]
        if not blocks and all(hasattr(model, name) for name in ("down_block", "transformer_layers", "up_block")):
            blocks = [model.down_block, *model.transformer_layers, model.up_block]
        return blocks


@torch.no_grad()
def smoke_forward(model: MeissonicGenerator, folder: Path) -> None:
    """Run the checkpoint's transformer once, on one sample of the empty prompt, all tokens masked.

    Its code comes with the checkpoint and meets the installed diffusers only here, so an incompatibility
    (e.g. an attribute an attention processor expects) surfaces at load time as a ModelLoadError naming the
    folder, not at the first rollout. The grid is the model's own: checkpoint code may hold fixed-size position
    tables (a 2 x 2 test grid failed on one), and one forward of one sample costs little next to reading the
    weights."""
    num_tokens = model.grid_size[0] * model.grid_size[1]
    tokens_BL = torch.full((1, num_tokens), model.mask_token_id, dtype=torch.long, device=model.device)
    try:
        logits_BLV = model.logits(tokens_BL, model.encode_prompts([""]), 0, 1)
    except Exception as error:
        import diffusers

        raise ModelLoadError(
            f"{folder}: a test forward of transformer/{CODE_FILE} failed with diffusers {diffusers.__version__}: "
            f"{type(error).__name__}: {error}"
        ) from error
    expected = (1, num_tokens, model.codebook_size)
    if tuple(logits_BLV.shape) != expected:
        raise ModelLoadError(
            f"{folder}: a test forward of transformer/{CODE_FILE} gave logits of shape "
            f"{tuple(logits_BLV.shape)}, expected {expected}"
        )


def _output_tensor(output) -> torch.Tensor:
    """The released forward returns the logits tensor itself (even with return_dict=True); accept the usual
    diffusers output forms too."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, tuple):
        return output[0]
    return output.sample


def _check_conditioning(folder: Path, config, text) -> None:
    """The transformer's text input widths must match the text encoder."""
    pairs = (
        ("joint_attention_dim", "hidden_size"),
        ("pooled_projection_dim", "projection_dim"),
        ("encoder_hidden_size", "hidden_size"),  # a UVit2D-style class in this format names them as aMUSEd does
        ("cond_embed_dim", "projection_dim"),
    )
    for ours, theirs in pairs:
        expected, actual = getattr(config, ours, None), getattr(text, theirs)
        if expected is not None and int(expected) != int(actual):
            raise ModelLoadError(
                f"{folder}: transformer {ours}={expected} but the text encoder's {theirs} is {actual}; "
                "text_encoder/ does not belong to this transformer"
            )
