"""`maskfocus pretrain` on a few steps per stage: every part is rebuilt, saved, loadable and measured."""

from __future__ import annotations

import json

from maskfocus.shapes.pretrain import PretrainConfig, run_pretraining
from maskfocus.shapes.pretrain_clip import ClipPretrainConfig
from maskfocus.shapes.pretrain_generator import GeneratorPretrainConfig, mask_random_positions
from maskfocus.shapes.pretrain_vq import VQPretrainConfig


def test_all_stages_rebuild_a_loadable_model_and_write_the_card(tmp_path):
    config = PretrainConfig(
        vq=VQPretrainConfig(num_steps=2, batch_size=4),
        generator=GeneratorPretrainConfig(num_scenes=16, num_steps=2, batch_size=4),
        clip=ClipPretrainConfig(num_steps=2, batch_size=4),
        eval_images_per_prompt=1,
        measure_rows=6,
    )
    report = run_pretraining(tmp_path, ["vq", "generator", "clip"], config=config, command="test")
    assert set(report["stage_seconds"]) == {"vq", "generator", "clip"}
    measurements = report["measurements"]
    assert measurements["base_model"]["num_images"] == 6
    assert set(measurements["clip_zero_shot"]) == {"color", "shape"}
    assert (tmp_path / "shapes-tiny" / "model_index.json").is_file()
    assert (tmp_path / "shapes-clip" / "open_clip_config.json").is_file()
    card = (tmp_path / "MODEL_CARD.md").read_text()
    assert "shapes-geneval" in card and "zero-shot" in card
    log = [json.loads(line) for line in (tmp_path / "pretrain_log.jsonl").read_text().splitlines()]
    assert {record["stage"] for record in log} == {"vq", "generator", "clip"}


def test_maskgit_training_masks_follow_the_cosine_ratio():
    import torch

    tokens = torch.zeros(2000, 64, dtype=torch.long)
    masked = mask_random_positions(tokens, 99, torch.Generator().manual_seed(0))
    fractions = masked.float().mean(-1)
    assert (masked.sum(-1) >= 1).all()
    # E[cos(pi/2 r)] = 2/pi for r ~ U(0, 1)
    assert abs(fractions.mean().item() - 2 / 3.14159) < 0.03


def test_vq_code_logits_pick_the_code_the_quantizer_picks():
    import torch

    from maskfocus.shapes.pretrain_vq import code_logits
    from maskfocus.shapes.tiny_model import build_vqvae

    model = build_vqvae().eval()
    with torch.no_grad():
        latents = model.encode(torch.rand(2, 3, 64, 64) * 2 - 1).latents
        _, _, (_, _, indices) = model.quantize(latents)
        chosen = code_logits(latents, model.quantize.embedding.weight).argmax(-1)
    assert torch.equal(chosen, indices.flatten())


def test_vq_training_decodes_as_the_pipeline_does_and_aliased_codes_are_never_chosen():
    import torch

    from maskfocus.shapes.pretrain_vq import alias_unused_codes, decode_codes
    from maskfocus.shapes.tiny_model import CODEBOOK_SIZE, build_vqvae

    model = build_vqvae().eval()
    codes = torch.randint(0, CODEBOOK_SIZE, (2, 16, 16))
    with torch.no_grad():
        reference = model.decode(codes.flatten(), force_not_quantize=True, shape=(2, 16, 16, 16)).sample
        assert torch.allclose(decode_codes(model, codes), reference, atol=1e-5)
        alias_unused_codes(model, num_used=10)
        _, _, (_, _, indices) = model.quantize(model.encode(torch.rand(4, 3, 64, 64) * 2 - 1).latents)
    assert int(indices.max()) < 10
    assert torch.equal(
        model.quantize.embedding.weight[10:], model.quantize.embedding.weight[0].expand(CODEBOOK_SIZE - 10, -1)
    )
