"""Tokenisation: a small byte-level BPE tokenizer trained on the spot, and left-padded batches
with attention masks (:class:`Batch`), from text (:func:`encode_batch`) or from token ids
(:func:`left_pad`).

    >>> tok = train_tokenizer(["the cat sat", "a dog ran"], vocab_size=300)
    >>> tok.padding_side
    'left'
    >>> encode_batch(tok, ["the cat", "a dog ran"]).attention_mask.shape[0]
    2
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import torch
from jaxtyping import Int
from torch import Tensor
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from unlearn_interp.errors import UnlearnInterpError

BOS, EOS, PAD, UNK = "<|bos|>", "<|eos|>", "<|pad|>", "<|unk|>"


def train_tokenizer(
    texts: Iterable[str], vocab_size: int = 512, *, add_bos: bool = True
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts`` and wrap it as a HuggingFace fast tokenizer.

    Byte-level like GPT-2 (every string encodes, a leading space is part of the word), with BOS,
    EOS and PAD tokens and left padding. With ``add_bos`` (default) the post-processor prepends
    BOS, as Llama-family tokenizers do; without it nothing is added, as GPT-2's tokenizer does,
    so code paths that depend on BOS handling can be exercised both ways.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS, EOS, PAD, UNK],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(texts), trainer=trainer)
    if add_bos:
        bos_id = tokenizer.token_to_id(BOS)
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        padding_side="left",
    )


@dataclasses.dataclass(frozen=True)
class Batch:
    """Token ids and attention mask of a left-padded batch (padding is 0 in the mask)."""

    tokens: Int[Tensor, "batch pos"]
    attention_mask: Int[Tensor, "batch pos"]

    def to(self, device: str | torch.device) -> Batch:
        return Batch(self.tokens.to(device), self.attention_mask.to(device))

    @property
    def last_positions(self) -> Int[Tensor, " batch"]:
        """Index of each row's last real token (the last column, whatever the padding side)."""
        pos = torch.arange(self.tokens.shape[1], device=self.tokens.device)
        return (self.attention_mask.bool() * pos).amax(dim=1)


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id to pad with: the pad token, else EOS (as the RMU reference pads), else 0."""
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return int(token_id)
    return 0


def encode_batch(
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    max_len: int | None = None,
    *,
    add_special_tokens: bool = True,
) -> Batch:
    """Tokenise ``texts`` into one left-padded batch with an attention mask.

    BOS is added exactly as the tokenizer itself adds it (``add_special_tokens``), as the RMU
    reference and lm-evaluation-harness do; texts longer than ``max_len`` tokens are truncated on
    the right. A tokenizer without a pad token pads with EOS, as the reference does.

    >>> batch = encode_batch(model.tokenizer, ["short", "a longer prompt"], max_len=512)  # doctest: +SKIP
    >>> logits = model(batch.tokens, attention_mask=batch.attention_mask)              # doctest: +SKIP
    """
    if not texts:
        raise UnlearnInterpError("cannot encode an empty list of texts")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    encoded = tokenizer(
        list(texts),
        padding=True,
        truncation=max_len is not None,
        max_length=max_len,
        return_tensors="pt",
        add_special_tokens=add_special_tokens,
        padding_side="left",
    )
    return Batch(encoded["input_ids"], encoded["attention_mask"])


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> Batch:
    """Already-tokenised ``sequences`` as one left-padded batch with an attention mask.

    For token ids built by hand (a context plus part of a continuation), where
    :func:`encode_batch` would re-tokenise text.

    >>> left_pad([[5, 6, 7], [8]], pad_id=0).tokens.tolist()
    [[5, 6, 7], [0, 0, 8]]
    """
    if not sequences or any(len(s) == 0 for s in sequences):
        raise UnlearnInterpError("cannot pad an empty batch or an empty sequence")
    width = max(len(s) for s in sequences)
    tokens = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        tokens[row, width - len(seq) :] = torch.as_tensor(list(seq), dtype=torch.long)
        mask[row, width - len(seq) :] = 1
    return Batch(tokens, mask)


__all__ = [
    "BOS",
    "EOS",
    "PAD",
    "UNK",
    "Batch",
    "encode_batch",
    "left_pad",
    "pad_token_id",
    "train_tokenizer",
]
