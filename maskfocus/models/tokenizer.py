"""Word-level tokenizer for the built-in tiny model, saved in the transformers fast-tokenizer format.

The tiny text encoder knows only the shapes-world vocabulary; a prompt with any other word is rejected
up front with the list of known words instead of silently mapping it to <unk>.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

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
    vocab = tokenizer.get_vocab()
    if UNK not in vocab:  # a real CLIP BPE tokenizer: every string is representable
        return
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
