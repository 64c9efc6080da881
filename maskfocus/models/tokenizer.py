"""Word-level tokenizer for the built-in tiny model, saved in the transformers fast-tokenizer format.

The tiny text encoder knows only the shapes-world vocabulary; a prompt with any other word is rejected
up front with the list of known words instead of silently mapping it to <unk>. Case and punctuation are not
words: every encoder of a word-level tokenizer reads prompts through `prompt_ids`, which drops them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

if TYPE_CHECKING:
    import torch

PAD, BOS, UNK, EOS = "<pad>", "<bos>", "<unk>", "<eos>"
SPECIAL_TOKENS = (PAD, BOS, UNK, EOS)  # ids 0..3; EOS is deliberately not id 2 (CLIP's legacy argmax pooling)
MAX_LENGTH = 24  # the longest shapes-world caption is 18 words (four coloured objects)
_WORD = re.compile(r"[a-z]+")
_NUMBER = re.compile(r"\d+")
_LETTERS = re.compile(r"[^\W\d_]+")


class UnknownWordError(ValueError):
    """A prompt uses words the model's tokenizer does not know."""


def build_word_tokenizer(words: Iterable[str], max_length: int = MAX_LENGTH) -> PreTrainedTokenizerFast:
    """Tokenizer mapping each lower-case word to one id; specials first, then `words` sorted."""
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS)}
    for word in sorted(set(words)):
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        model_max_length=max_length,
    )


def known_words(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """The plain words of a tokenizer's vocabulary (specials left out), sorted."""
    return sorted(word for word in tokenizer.get_vocab() if word not in SPECIAL_TOKENS)


def check_prompts(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str]) -> None:
    """Raise UnknownWordError naming the unknown words and the known ones; also reject over-long prompts."""
    if not is_word_level(tokenizer):  # a real CLIP BPE tokenizer: every string is representable
        return
    vocab = tokenizer.get_vocab()
    for prompt in prompts:
        words = _WORD.findall(prompt.lower())
        if numbers := sorted(set(_NUMBER.findall(prompt))):
            raise UnknownWordError(
                f"prompt {prompt!r} has number(s) {', '.join(numbers)}, which the model's word tokenizer drops; "
                "write them as words (two, three, four)"
            )
        unknown = sorted({word for word in _LETTERS.findall(prompt.lower()) if word not in vocab})  # "circlé" whole
        if unknown:
            raise UnknownWordError(
                f"prompt {prompt!r} uses word(s) the model does not know: {', '.join(unknown)}.\n"
                f"Known words: {' '.join(known_words(tokenizer))}"
            )
        if len(words) + 2 > tokenizer.model_max_length:
            raise UnknownWordError(
                f"prompt {prompt!r} has {len(words)} words; the model reads at most {tokenizer.model_max_length - 2}"
            )


def normalize_prompt(prompt: str) -> str:
    """Lower-case and keep only words, so that punctuation never reaches the word-level tokenizer."""
    return " ".join(_WORD.findall(prompt.lower()))


def is_word_level(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether `tokenizer` maps whole words to ids (the tiny models' `build_word_tokenizer`), not sub-words."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return backend is not None and isinstance(backend.model, models.WordLevel)


def prompt_ids(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], max_length: int) -> torch.Tensor:
    """Token ids (B, max_length), padded and truncated. A word-level tokenizer reads the prompts as `check_prompts`
    checks them, lower-cased and words only: it has no normalizer or punctuation rule, so "A Red Circle." would
    read as four <unk> tokens, and "a red circle, a blue square" as "... circle <unk> a ..."."""
    texts = [normalize_prompt(prompt) for prompt in prompts] if is_word_level(tokenizer) else list(prompts)
    return tokenizer(texts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt").input_ids
