"""`maskfocus pretrain` on a few steps per stage: every part is rebuilt, saved, loadable and measured."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from maskfocus.shapes.pretrain import PretrainConfig, run_pretraining
from maskfocus.shapes.pretrain_clip import ClipPretrainConfig
from maskfocus.shapes.pretrain_generator import GeneratorPretrainConfig, mask_random_positions
from maskfocus.shapes.pretrain_vq import VQPretrainConfig
from maskfocus.stopping import RunStopped


def test_all_stages_rebuild_a_loadable_model_and_write_the_card(tmp_path):
    config = PretrainConfig(
        vq=VQPretrainConfig(num_steps=2, batch_size=4, table_scenes=300),  # the shipped 4,000 cost ~15 s more here
        generator=GeneratorPretrainConfig(num_scenes=16, num_steps=2, batch_size=4),
        clip=ClipPretrainConfig(num_steps=2, batch_size=4),
        eval_images_per_prompt=1,
        measure_rows=6,
    )
    report = run_pretraining(tmp_path, ["vq", "generator", "clip"], config=config, command="test")
    assert set(report["stage_seconds"]) == {"vq", "generator", "clip"}
    measurements = report["measurements"]
    assert measurements["base_model"]["num_images"] == 6
    assert measurements["sampler"]["compile"] is False  # 6 images: sampled eagerly, as `maskfocus eval` would
    assert set(measurements["clip_zero_shot"]) == {"color", "shape"}
    assert (tmp_path / "shapes-tiny" / "model_index.json").is_file()
    assert (tmp_path / "shapes-clip" / "open_clip_config.json").is_file()
    card = (tmp_path / "MODEL_CARD.md").read_text()
    assert "shapes-geneval" in card and "zero-shot" in card
    log = [json.loads(line) for line in (tmp_path / "pretrain_log.jsonl").read_text().splitlines()]
    assert {record["stage"] for record in log} == {"start", "vq", "generator", "clip"}
    assert log[0] == {
        "time": log[0]["time"],
        "stage": "start",
        "stages": ["vq", "generator", "clip"],
        "seed": 0,
        "command": "test",
    }
    assert report["stage_seeds"] == {"vq": 0, "generator": 0, "clip": 0}
    assert "Seed of each stage: vq 0, generator 0, clip 0" in card


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

    torch.manual_seed(0)  # random weights and inputs, fixed: a near-tie between two codes could flip either argmax
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
        # float32 sums in another order (1.2e-5 apart with one torch thread); a wrong code is O(1) off
        assert torch.allclose(decode_codes(model, codes), reference, atol=1e-4)
        alias_unused_codes(model, num_used=10)
        _, _, (_, _, indices) = model.quantize(model.encode(torch.rand(4, 3, 64, 64) * 2 - 1).latents)
    assert int(indices.max()) < 10
    assert torch.equal(
        model.quantize.embedding.weight[10:], model.quantize.embedding.weight[0].expand(CODEBOOK_SIZE - 10, -1)
    )


def test_foreground_first_masks_take_every_object_token_before_any_background():
    import torch

    generator = torch.Generator().manual_seed(0)
    tokens = torch.zeros(400, 64, dtype=torch.long)
    tokens[:, 10:18] = 7  # eight object tokens per sample, background code 0 elsewhere
    masked = mask_random_positions(tokens, 99, generator, foreground_first=1.0, background_code=0)
    for row_tokens, row_mask in zip(tokens, masked, strict=True):
        count = int(row_mask.sum())
        objects_masked = int(row_mask[row_tokens != 0].sum())
        assert objects_masked == min(count, 8)  # slow reference: objects first, then background
    fractions = masked.float().mean(-1)
    assert abs(fractions.mean().item() - 2 / 3.14159) < 0.03  # the mask ratio is unchanged


def test_foreground_first_applies_to_the_given_fraction_of_samples():
    import torch

    tokens = torch.zeros(4000, 64, dtype=torch.long)
    tokens[:, :8] = 5
    generator = torch.Generator().manual_seed(1)
    masked = mask_random_positions(tokens, 99, generator, foreground_first=0.3, background_code=0)
    small = masked.sum(-1) <= 8  # rows that mask at most as many tokens as there are object tokens
    objects_only = masked[:, 8:].sum(-1) == 0
    # uniform rows almost never hit only object tokens by chance, foreground-first rows always do
    share = objects_only[small].float().mean().item()
    assert 0.25 < share < 0.4


def test_zero_foreground_first_keeps_the_uniform_masks_of_a_seed():
    import torch

    tokens = torch.randint(0, 5, (16, 64))
    plain = mask_random_positions(tokens, 99, torch.Generator().manual_seed(3))
    zero = mask_random_positions(tokens, 99, torch.Generator().manual_seed(3), foreground_first=0.0, background_code=0)
    assert torch.equal(plain, zero)


def test_transformer_shape_sets_the_built_transformer():
    from maskfocus.shapes.tiny_model import TransformerShape, build_transformer

    model = build_transformer(TransformerShape(num_res_blocks=2, num_hidden_layers=1))
    assert model.config.num_res_blocks == 2 and model.config.num_hidden_layers == 1
    assert len(model.down_block.res_blocks) == 2 and len(model.transformer_layers) == 1


def test_a_new_vq_alone_is_refused_over_a_folder_that_holds_a_generator(tmp_path):
    """The generator there was trained on the old VQ's codes: under a new one it drew noise (the eval fell to 0)."""
    import pytest

    from maskfocus.config import ConfigError

    (tmp_path / "shapes-tiny" / "transformer").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"--stages vq without generator: .*shapes-tiny holds a generator"):
        run_pretraining(tmp_path, ["vq"], config=PretrainConfig())
    assert sorted(path.name for path in tmp_path.rglob("*")) == ["shapes-tiny", "transformer"]


def test_a_generator_alone_without_a_vq_is_refused_before_anything_is_written(tmp_path):
    import pytest

    from maskfocus.config import ConfigError

    with pytest.raises(ConfigError, match=r"--stages generator: no trained VQ in .*shapes-tiny/vqvae"):
        run_pretraining(tmp_path / "out", ["generator"], config=PretrainConfig())
    assert not (tmp_path / "out").exists()  # not even an empty pretrain_log.jsonl


def test_a_stop_during_the_generator_leaves_the_old_vq_under_the_old_generator(tmp_path, monkeypatch):
    """With vq,generator over a complete folder the new VQ is saved with the new generator, not before it."""
    import pytest

    import maskfocus.shapes.pretrain_generator

    old_vq = tmp_path / "shapes-tiny" / "vqvae"
    old_vq.mkdir(parents=True)
    (old_vq / "config.json").write_text("{}")
    (tmp_path / "shapes-tiny" / "transformer").mkdir()

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(maskfocus.shapes.pretrain_generator, "train_generator", stopped)
    config = PretrainConfig(vq=VQPretrainConfig(num_steps=2, batch_size=4, table_scenes=300))
    with pytest.raises(RunStopped, match=rf"^stopped; this run saved nothing in {tmp_path} \(a stage in progress"):
        run_pretraining(tmp_path, ["vq", "generator"], config=config)
    assert [path.name for path in old_vq.iterdir()] == ["config.json"]
    assert (old_vq / "config.json").read_text() == "{}"
    report = tmp_path / "pretrain_report.json"  # the new VQ is not on disk, so the report does not list it
    assert not report.exists() or "vq" not in json.loads(report.read_text())["stage_seconds"]


def test_a_stop_in_a_later_stage_leaves_a_report_of_how_each_saved_stage_was_made(tmp_path, monkeypatch):
    import pytest

    import maskfocus.shapes.pretrain_clip

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(maskfocus.shapes.pretrain_clip, "train_clip", stopped)
    config = PretrainConfig(
        seed=5,
        vq=VQPretrainConfig(num_steps=2, batch_size=4, table_scenes=300),
        generator=GeneratorPretrainConfig(num_scenes=16, num_steps=2, batch_size=4),
    )
    with pytest.raises(
        RunStopped, match=r"this run saved vq, generator in .*; finish with the same command and --stages clip$"
    ):
        run_pretraining(tmp_path, ["vq", "generator", "clip"], config=config, command="cmd")
    report = json.loads((tmp_path / "pretrain_report.json").read_text())
    assert set(report["stage_seconds"]) == {"vq", "generator"}
    assert report["stage_seeds"] == {"vq": 5, "generator": 5}
    assert report["commands"] == {"vq": "cmd", "generator": "cmd"}
    assert report["config"]["generator"]["num_steps"] == 2 and "clip" not in report["config"]


def test_a_negative_seed_is_refused_by_the_config():
    import pytest
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="greater than or equal to 0"):
        PretrainConfig(seed=-1)


def test_a_rerun_of_one_stage_records_its_settings_and_keeps_the_others():
    """`--stages clip --seed 3` over a complete report said every stage was trained with seed 3."""
    from maskfocus.shapes.pretrain import _record_settings

    first = PretrainConfig(generator=GeneratorPretrainConfig(num_steps=7))
    report: dict = {}
    _record_settings(report, first, ["vq", "generator", "clip"])
    rerun = PretrainConfig(seed=3, clip=ClipPretrainConfig(num_steps=5), eval_images_per_prompt=2)
    _record_settings(report, rerun, ["clip"])
    assert report["stage_seeds"] == {"vq": 0, "generator": 0, "clip": 3}
    assert report["config"]["generator"]["num_steps"] == 7 and report["config"]["clip"]["num_steps"] == 5
    assert report["config"]["eval_images_per_prompt"] == 2 and "seed" not in report["config"]
    trained = {"vq": 1, "generator": 1, "clip": 1}
    shipped_style = {"config": {"seed": 0, **first.model_dump(mode="json")}, "stage_seconds": trained}  # as shipped
    _record_settings(shipped_style, rerun, ["clip"])
    assert shipped_style["stage_seeds"] == {"vq": 0, "generator": 0, "clip": 3}


def test_the_shipped_reports_card_names_each_stages_seed_and_a_new_stage_drops_the_old_notes(tmp_path):
    """The shipped report predates per-stage seeds: `--stages measure` rendered "Seed of each stage: " with nothing
    after it. Its notes were written by hand about the weights it describes: a retrained stage carried them into the
    new card ("the vq and clip stages are the previous run's ...")."""
    import shutil

    from maskfocus.models.loading import builtin_folder
    from maskfocus.shapes.pretrain import _record_stage, load_report, model_card

    report_path = tmp_path / "pretrain_report.json"
    shutil.copy(builtin_folder().parent / "pretrain_report.json", report_path)
    report = load_report(report_path)
    assert report["notes"] and "Seed of each stage: vq 0, generator 0, clip 0" in model_card(report)
    measured = report["measurements"]
    _record_stage(tmp_path, report, PretrainConfig(seed=5), "maskfocus pretrain --seed 5", [], "vq", 1.0)
    assert "notes" not in report and "measurements" not in report  # both were about the weights before
    report["measurements"] = measured  # as the measure stage writes them again
    assert "Note:" not in model_card(report) and "Seed of each stage: vq 5, generator 0, clip 0" in model_card(report)


def test_the_shipped_model_card_is_the_one_its_report_renders():
    """The card had been edited by hand (a machine the report did not hold, no per-stage seeds): `--stages measure`
    would have rewritten it otherwise. The report now holds what the card said, and the generator's real command."""
    from maskfocus.models.loading import builtin_folder
    from maskfocus.shapes.pretrain import load_report, model_card

    shipped = builtin_folder().parent
    report = load_report(shipped / "pretrain_report.json")
    assert (shipped / "MODEL_CARD.md").read_text() == model_card(report)
    assert report["commands"]["generator"] == "maskfocus pretrain --stages generator --out DIR"


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("generator.caption_mix.object_sizes", [15.0], r"object_sizes: a non-empty subset of \[12.0, 16.0, 20.0\]"),
        ("clip.caption_mix.object_sizes", [], "object_sizes: a non-empty subset"),
        ("clip.caption_mix.p_drop", 7, "p_drop is a probability: between 0 and 1, got 7"),
        ("generator.caption_mix.num_objects_weights", [0, 0], "num_objects_weights: 1 to 4 weights"),
        ("generator.caption_mix.num_objects_weights", [1, 1, 1, 1, 1], "num_objects_weights: 1 to 4 weights"),
        ("generator.caption_mix.num_objects_weights", [1, -1], "none negative"),
        ("vq.learning_rate", -1, "vq.learning_rate: Input should be greater than 0"),
    ],
)
def test_caption_mix_and_learning_rates_are_checked_when_the_settings_are_read(key, value, problem):
    """These passed the config and failed as a traceback once their stage started: a bad clip.* setting after
    the VQ and generator stages had trained for an hour."""
    from maskfocus.config import ConfigError, section_with_overrides

    with pytest.raises(ConfigError, match=problem):
        section_with_overrides(PretrainConfig, {key: value}, "--set")


def test_pretrain_overrides_are_validated_with_the_field_path():
    import pytest

    from maskfocus.config import ConfigError, section_with_overrides

    config = section_with_overrides(PretrainConfig, {"generator.transformer.num_res_blocks": 3}, "test")
    assert config.generator.transformer.num_res_blocks == 3
    with pytest.raises(ConfigError, match="generator.transformer.num_res_block"):
        section_with_overrides(PretrainConfig, {"generator.transformer.num_res_block": 3}, "test")


def test_an_override_of_one_caption_mix_field_keeps_the_sections_other_defaults():
    """The generator's and CLIP's caption mixes default to other values than CaptionMix(); setting one field must
    not reset the rest to CaptionMix's (it once reset the generator's one object size to all three)."""
    from maskfocus.config import section_with_overrides

    defaults = PretrainConfig()
    config = section_with_overrides(
        PretrainConfig, {"generator.caption_mix.p_count": 1.0, "clip.caption_mix.p_color": 0.5}, "test"
    )
    assert config.generator.caption_mix == dataclasses.replace(defaults.generator.caption_mix, p_count=1.0)
    assert config.clip.caption_mix == dataclasses.replace(defaults.clip.caption_mix, p_color=0.5)
    assert config.generator.caption_mix.object_sizes == (16.0,)
    assert config.vq == defaults.vq


def test_generator_training_can_continue_from_a_model():
    """`start_from` trains the given text encoder and transformer further, in place (relation_finetune.py)."""
    from maskfocus.models.amused import AmusedGenerator
    from maskfocus.shapes.pretrain_generator import train_generator

    model = AmusedGenerator.from_folder()
    before = {k: v.clone() for k, v in model.transformer.state_dict().items()}
    text_before = {k: v.clone() for k, v in model.text_encoder.state_dict().items()}
    config = GeneratorPretrainConfig(num_scenes=4, num_steps=2, batch_size=2, condition_dropout=0.0)
    records = []
    text_encoder, transformer = train_generator(
        config,
        model.vqvae,
        model.tokenizer,
        0,
        records.append,
        lambda _: None,
        start_from=(model.text_encoder, model.transformer),
    )
    assert text_encoder is model.text_encoder and transformer is model.transformer
    assert not transformer.training and not text_encoder.training
    assert any(not torch.equal(v, before[k]) for k, v in transformer.state_dict().items())
    assert any(not torch.equal(v, text_before[k]) for k, v in text_encoder.state_dict().items())
    assert records[0]["loss"] < 1.0  # a trained model's loss, not a fresh one's (~log 384 = 5.95)


def test_a_frozen_text_encoder_stays_as_given_while_the_transformer_trains():
    from maskfocus.models.amused import AmusedGenerator
    from maskfocus.shapes.pretrain_generator import train_generator

    model = AmusedGenerator.from_folder()
    before = {k: v.clone() for k, v in model.transformer.state_dict().items()}
    text_before = {k: v.clone() for k, v in model.text_encoder.state_dict().items()}
    config = GeneratorPretrainConfig(
        num_scenes=4, num_steps=2, batch_size=2, condition_dropout=0.0, train_text_encoder=False
    )
    text_encoder, transformer = train_generator(
        config,
        model.vqvae,
        model.tokenizer,
        0,
        lambda _: None,
        lambda _: None,
        start_from=(model.text_encoder, model.transformer),
    )
    assert any(not torch.equal(v, before[k]) for k, v in transformer.state_dict().items())
    assert all(torch.equal(v, text_before[k]) for k, v in text_encoder.state_dict().items())
    assert not any(p.requires_grad for p in text_encoder.parameters())


def test_a_seed_torch_cannot_take_is_refused_by_the_config():
    """2**64 passed and ended in torch.manual_seed's bare `Overflow when unpacking long long`."""
    from pydantic import ValidationError

    PretrainConfig(seed=2**63 - 1)
    with pytest.raises(ValidationError, match="less than or equal to 9223372036854775807"):
        PretrainConfig(seed=2**64)


@pytest.mark.parametrize(
    ("rows", "words"), [(None, "every prompt row"), (588, "every prompt row"), (2, "only the first 2")]
)
def test_the_card_calls_a_measurement_partial_only_when_it_left_rows_out(rows, words):
    """`measure_rows` at or past the eval set's 588 rows measures every row: the card called it partial."""
    from maskfocus.shapes.card import _rows_words

    assert _rows_words({"measured_config": {"measure_rows": rows}}).startswith(words)
