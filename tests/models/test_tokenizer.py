from __future__ import annotations

import pytest

from maskfocus.models.tokenizer import EOS, UnknownWordError, build_word_tokenizer, check_prompts, known_words


def test_word_level_ids_with_bos_eos_and_padding():
    tokenizer = build_word_tokenizer(["a", "photo", "of", "red", "circle"])
    ids = tokenizer("a photo of a red circle", padding="max_length", max_length=16).input_ids
    vocab = tokenizer.get_vocab()
    assert ids[:8] == [
        vocab["<bos>"],
        vocab["a"],
        vocab["photo"],
        vocab["of"],
        vocab["a"],
        vocab["red"],
        vocab["circle"],
        vocab[EOS],
    ]
    assert ids[8:] == [tokenizer.pad_token_id] * 8
    assert vocab[EOS] != 2  # CLIP's legacy pooling treats id 2 specially


def test_saved_tokenizer_loads_offline(tmp_path):
    from transformers import AutoTokenizer

    tokenizer = build_word_tokenizer(["red", "circle"])
    tokenizer.save_pretrained(str(tmp_path))
    loaded = AutoTokenizer.from_pretrained(str(tmp_path), local_files_only=True)
    assert loaded("red circle").input_ids == tokenizer("red circle").input_ids


def test_unknown_word_error_lists_the_known_words():
    tokenizer = build_word_tokenizer(["a", "photo", "of", "circle"])
    with pytest.raises(UnknownWordError) as error:
        check_prompts(tokenizer, ["a photo of a dog"])
    message = str(error.value)
    assert "dog" in message and "Known words: a circle of photo" in message
    assert known_words(tokenizer) == ["a", "circle", "of", "photo"]


def test_too_long_prompt_is_rejected():
    tokenizer = build_word_tokenizer(["a"], max_length=6)
    with pytest.raises(UnknownWordError, match="at most 4"):
        check_prompts(tokenizer, ["a a a a a"])


def test_a_number_in_digits_is_refused_rather_than_dropped():
    """The word tokenizer reads only letters: "3 red circles" would be sampled as "red circles"."""
    tokenizer = build_word_tokenizer(["a", "photo", "of", "red", "circles", "three"])
    with pytest.raises(UnknownWordError, match=r"has number\(s\) 3, which the model's word tokenizer drops; write"):
        check_prompts(tokenizer, ["a photo of 3 red circles"])
    check_prompts(tokenizer, ["a photo of three red circles"])


def test_a_word_with_a_letter_outside_a_z_is_named_whole():
    """The tokenizer splits "circlé" at the é; the error names the word the user wrote, not "circl"."""
    tokenizer = build_word_tokenizer(["a", "circle"])
    with pytest.raises(UnknownWordError, match=r"does not know: circlé\."):
        check_prompts(tokenizer, ["a circlé"])
    check_prompts(tokenizer, ["A circle."])  # case and punctuation are not words
