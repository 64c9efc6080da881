from __future__ import annotations

import pytest

from maskfocus.models.tokenizer import (
    EOS,
    UNK,
    UnknownWordError,
    build_word_tokenizer,
    check_prompts,
    is_word_level,
    known_words,
    prompt_ids,
)


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
    check_prompts(tokenizer, ["A circle."])  # case and punctuation are not words (prompt_ids drops them)


def test_prompts_are_encoded_as_they_are_checked_lower_case_and_words_only():
    """The tokenizer has no normalizer: called directly it reads "A" and "," as <unk> (a review found capitalised
    and punctuated prompts passing the check and sampled from <unk> tokens)."""
    tokenizer = build_word_tokenizer(["a", "red", "blue", "circle", "square"])
    unk = tokenizer.get_vocab()[UNK]
    raw = tokenizer(["A Red Circle.", "a red circle, a blue square"]).input_ids
    assert raw[0].count(unk) == 4 and raw[1].count(unk) == 1  # what the encoders got before
    written = ["A Red Circle.", "a red circle, a blue square", "  a RED circle!  "]
    plain = ["a red circle", "a red circle a blue square", "a red circle"]
    check_prompts(tokenizer, written)
    ids = prompt_ids(tokenizer, written, 12)
    assert ids.shape == (3, 12) and unk not in ids
    assert ids.tolist() == prompt_ids(tokenizer, plain, 12).tolist()
    assert ids[0, :5].tolist() == tokenizer("a red circle").input_ids


def test_a_prompt_the_length_check_passes_is_encoded_whole():
    """The check counts words; commas used to take positions too, so a prompt it passed lost its last words."""
    tokenizer = build_word_tokenizer(["a", "red", "circle"], max_length=24)
    prompt = ", ".join(["a red circle"] * 7) + ", a"  # 22 words and 7 commas
    check_prompts(tokenizer, [prompt])
    with pytest.raises(UnknownWordError, match="has 24 words; the model reads at most 22"):
        check_prompts(tokenizer, [prompt + " red circle"])
    ids = prompt_ids(tokenizer, [prompt], tokenizer.model_max_length)[0].tolist()
    vocab = tokenizer.get_vocab()
    assert ids[-2:] == [vocab["a"], vocab[EOS]] and vocab[UNK] not in ids


def test_a_sub_word_tokenizer_reads_prompts_as_written():
    """Only a word-level tokenizer's prompts are lower-cased: a sub-word (BPE) one, even with an <unk> token, keeps
    case and punctuation, and its prompts are not checked against a word list."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, UNK: 1, "A": 2, "a": 3, ".": 4, "b": 5}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    bpe = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token=UNK, pad_token="<pad>")
    assert not is_word_level(bpe) and is_word_level(build_word_tokenizer(["a"]))
    check_prompts(bpe, ["A zebra."])  # no word list to check against
    assert prompt_ids(bpe, ["A.", "a"], 3).tolist() == [[2, 4, 0], [3, 0, 0]]
