"""PositionalUVit2DModel: the sine-cosine table tells every grid position apart, the table is what lets the
network tell positions apart on a uniform grid, and benchmarks/positional_base.py's folder loads back through the
Meissonic adapter with the same logits."""

from __future__ import annotations

import pytest
import torch
from diffusers import UVit2DModel
from support import load_benchmark

from maskfocus.config import ModelConfig
from maskfocus.models import load_generator
from maskfocus.models.base import ModelLoadError
from maskfocus.models.loading import builtin_folder
from maskfocus.shapes.positional_uvit import PositionalUVit2DModel, sincos_table
from maskfocus.shapes.tiny_model import (
    CODEBOOK_SIZE,
    GRID_SIZE,
    TEXT_PROJECTION,
    TEXT_WIDTH,
    TransformerShape,
    build_text_encoder,
    build_transformer,
    default_micro_conds,
)

SMALL = TransformerShape(hidden_size=16, num_res_blocks=1, intermediate_size=16, num_attention_heads=2)


def test_sincos_table_halves_vary_along_one_axis_each_and_tell_all_positions_apart():
    table = sincos_table(16, 5, 7)
    assert table.shape == (16, 5, 7)
    rows, columns = table[:8], table[8:]
    assert torch.equal(rows, rows[:, :, :1].expand(-1, -1, 7))  # row features do not change along a row
    assert torch.equal(columns, columns[:, :1, :].expand(-1, 5, -1))
    flat = table.flatten(1).T  # (35 positions, 16)
    assert torch.cdist(flat, flat).add(torch.eye(35)).min() > 1e-3


def test_sincos_table_needs_channels_in_fours():
    with pytest.raises(ValueError, match="multiple of 4"):
        sincos_table(18, 4, 4)


def inputs(batch: int = 2):
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(batch, 8, TEXT_WIDTH, generator=generator)
    pooled = torch.randn(batch, TEXT_PROJECTION, generator=generator)
    return hidden, pooled, default_micro_conds(batch)


@torch.no_grad()
def interior_logits(model: UVit2DModel) -> torch.Tensor:
    """Logits at two interior positions of an all-mask grid, far from the borders the convolutions pad."""
    grid = torch.full((2, GRID_SIZE, GRID_SIZE), CODEBOOK_SIZE)
    logits = model(grid, *inputs())
    return logits[:, :, 8, 5], logits[:, :, 8, 10]


def test_without_the_table_a_uniform_grid_gives_equal_interior_logits_and_with_it_different_ones():
    torch.manual_seed(0)
    model = build_transformer(SMALL, PositionalUVit2DModel).eval()
    left, right = interior_logits(model)
    assert (left - right).abs().max() > 1e-3
    model.embed.position.data.zero_()  # a plain UVit2D: translation-equivariant away from the borders
    left, right = interior_logits(model)
    torch.testing.assert_close(left, right, rtol=1e-5, atol=1e-5)


def test_keyword_call_of_the_meissonic_adapter_equals_the_positional_uvit2d_call():
    torch.manual_seed(0)
    model = build_transformer(SMALL, PositionalUVit2DModel).eval()
    grid = torch.randint(0, CODEBOOK_SIZE + 1, (2, GRID_SIZE, GRID_SIZE))
    hidden, pooled, micro = inputs()
    with torch.no_grad():
        positional = model(grid, hidden, pooled, micro)
        keywords = model(
            hidden_states=grid,
            encoder_hidden_states=hidden,
            pooled_projections=pooled,
            micro_conds=micro,
            timestep=torch.zeros(2, dtype=torch.long),
            img_ids=torch.zeros(GRID_SIZE * GRID_SIZE, 3),
            txt_ids=torch.zeros(8, 3),
        )
    assert torch.equal(positional, keywords)


@pytest.fixture(scope="module")
def written_folder(tmp_path_factory):
    torch.manual_seed(0)
    base = builtin_folder()
    tokenizer_size = 64  # build_text_encoder only needs the ids to fit; the folder's tokenizer is the base's
    text_encoder = build_text_encoder(tokenizer_size, 0, 1, 2)
    transformer = build_transformer(SMALL, PositionalUVit2DModel).eval()
    module = load_benchmark("positional_base")
    target = tmp_path_factory.mktemp("positional") / "model"
    module.write_positional_folder(base, target, text_encoder, transformer)
    return target, transformer


def test_written_folder_is_meissonic_format_and_refuses_to_load_untrusted(written_folder):
    target, _ = written_folder
    assert (target / "transformer" / "transformer.py").is_file()
    assert not (target / "model_index.json").exists()
    with pytest.raises(ModelLoadError, match="trust_checkpoint_code"):
        load_generator(ModelConfig(path=str(target), kind="meissonic"))


def test_written_folder_loads_back_with_the_same_weights_at_64_pixels(written_folder):
    target, transformer = written_folder
    model = load_generator(ModelConfig(path=str(target), kind="meissonic", trust_checkpoint_code=True))
    assert type(model.transformer).__name__ == "PositionalUVit2DModel"
    assert model.image_size == 64 and model.grid_size == (GRID_SIZE, GRID_SIZE)
    assert model.mask_token_id == CODEBOOK_SIZE
    # FSDP2 shards these one by one: they were none (a Ray run's learner failed after its workers had started)
    expected = [transformer.down_block, *transformer.transformer_layers, transformer.up_block]
    assert [type(b).__name__ for b in model.blocks()] == [type(b).__name__ for b in expected] and len(expected) > 2
    loaded = model.transformer.state_dict()
    for name, value in transformer.state_dict().items():
        assert torch.equal(loaded[name], value), name
