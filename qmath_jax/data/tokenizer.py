"""One tokenizer interface over Hugging Face ``tokenizer.json`` and sentencepiece models.

Real Qwen2.5 checkpoints ship a byte-level BPE ``tokenizer.json`` (read with the ``tokenizers``
package); models trained from scratch here use sentencepiece (``train_sentencepiece``). Both
expose the same interface, ``Tokenizer``:

  vocab_size            rows the embedding table needs (every id is < vocab_size)
  pad_id                id used for padding: ``<|endoftext|>``, as Qwen does (padding is also
                        marked by segment_ids == 0, so its value never reaches a loss)
  eos_ids               (id of ``<|im_end|>``, id of ``<|endoftext|>``): generation stops on these
  encode(text)          list[int]; special tokens written in the text map to their own ids
  encode_with_offsets   (ids, [(start, end)] character spans into text) for loss masks
  decode(ids)           str, special tokens included as text
  token_to_id(token)    id of one token string, KeyError when absent

``load_tokenizer(path)`` picks the implementation from the file: ``tokenizer.json`` (or a
directory holding one) -> ``HFTokenizer``; ``*.model`` -> ``SentencePieceTokenizer``.
"""

import abc
import io
import os
import pathlib
from collections.abc import Iterable, Sequence

import sentencepiece
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from qmath_jax.data import chat
from qmath_jax.data import records

SPECIAL_TOKENS = (chat.ENDOFTEXT, chat.IM_START, chat.IM_END)


class Tokenizer(abc.ABC):
  """The interface every stage imports."""

  @property
  @abc.abstractmethod
  def vocab_size(self) -> int:
    """Number of ids; every id produced is in [0, vocab_size)."""

  @abc.abstractmethod
  def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Ids and, per id, the [start, end) character span of ``text`` it came from."""

  @abc.abstractmethod
  def decode(self, ids: Sequence[int]) -> str:
    """Text of ``ids``; special tokens appear as their text."""

  @abc.abstractmethod
  def token_to_id(self, token: str) -> int:
    """Id of ``token``; raises KeyError naming it when the vocabulary lacks it."""

  def encode(self, text: str) -> list[int]:
    return self.encode_with_offsets(text)[0]

  @property
  def pad_id(self) -> int:
    return self.token_to_id(chat.ENDOFTEXT)

  @property
  def eos_ids(self) -> tuple[int, int]:
    return (self.token_to_id(chat.IM_END), self.token_to_id(chat.ENDOFTEXT))


class HFTokenizer(Tokenizer):
  """A Hugging Face ``tokenizer.json`` (byte-level BPE for Qwen) via the ``tokenizers`` package."""

  def __init__(self, path: str | os.PathLike):
    self.path = pathlib.Path(path)
    self._tok = tokenizers.Tokenizer.from_file(str(self.path))
    missing = [t for t in SPECIAL_TOKENS if self._tok.token_to_id(t) is None]
    if missing:
      raise ValueError(f"{self.path}: tokenizer lacks the ChatML special tokens {missing}")

  @property
  def vocab_size(self) -> int:
    return self._tok.get_vocab_size(with_added_tokens=True)

  def encode_with_offsets(self, text):
    enc = self._tok.encode(text, add_special_tokens=False)
    return list(enc.ids), [tuple(o) for o in enc.offsets]

  def decode(self, ids):
    return self._tok.decode(list(ids), skip_special_tokens=False)

  def token_to_id(self, token):
    found = self._tok.token_to_id(token)
    if found is None:
      raise KeyError(f"token {token!r} is not in {self.path}")
    return found


class SentencePieceTokenizer(Tokenizer):
  """A sentencepiece model whose ChatML special tokens are user-defined symbols."""

  def __init__(self, path: str | os.PathLike):
    self.path = pathlib.Path(path)
    self._sp = sentencepiece.SentencePieceProcessor(model_file=str(self.path))
    missing = [t for t in SPECIAL_TOKENS if self._sp.piece_to_id(t) == self._sp.unk_id()]
    if missing:
      raise ValueError(f"{self.path}: sentencepiece model lacks the ChatML symbols {missing}")

  @property
  def vocab_size(self) -> int:
    return self._sp.get_piece_size()

  def encode_with_offsets(self, text):
    try:  # sentencepiece >= 0.2.1 names the structured output return_type="proto".
      proto = self._sp.encode(text, return_type="proto")
    except TypeError:
      proto = self._sp.encode(text, out_type="immutable_proto")
    # Piece spans are UTF-8 byte offsets; map them to character offsets.
    byte_to_char = []
    for i, ch in enumerate(text):
      byte_to_char.extend([i] * len(ch.encode("utf-8")))
    byte_to_char.append(len(text))
    ids, offsets = [], []
    for piece in proto.pieces:
      ids.append(piece.id)
      offsets.append((byte_to_char[piece.begin], byte_to_char[piece.end]))
    return ids, offsets

  def decode(self, ids):
    return self._sp.decode(list(ids))

  def token_to_id(self, token):
    found = self._sp.piece_to_id(token)
    if found == self._sp.unk_id() and token != self._sp.id_to_piece(found):
      raise KeyError(f"token {token!r} is not in {self.path}")
    return found


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
  """Opens ``tokenizer.json`` (or a directory holding one) or a sentencepiece ``*.model``."""
  path = pathlib.Path(path)
  if path.is_dir():
    if (path / "tokenizer.json").is_file():
      return HFTokenizer(path / "tokenizer.json")
    models = sorted(path.glob("*.model"))
    if len(models) == 1:
      return SentencePieceTokenizer(models[0])
    raise FileNotFoundError(f"{path}: no tokenizer.json and not exactly one *.model file")
  if not path.is_file():
    raise FileNotFoundError(f"tokenizer file {str(path)!r} does not exist")
  if path.suffix == ".json":
    return HFTokenizer(path)
  if path.suffix == ".model":
    return SentencePieceTokenizer(path)
  raise ValueError(f"{path}: unknown tokenizer format (expected tokenizer.json or *.model)")


def train_sentencepiece(texts: Iterable[str], vocab_size: int, out_path: str | os.PathLike,
                        *, model_type: str = "bpe", seed_sentencepiece_size: int = 100_000,
                        max_sentence_length: int = 16384) -> SentencePieceTokenizer:
  """Trains a small sentencepiece model that round-trips any text exactly.

  The ChatML special tokens are user-defined symbols (ids 1, 2, 3 after ``<unk>`` = 0), so they
  are never split and map to their ids when written in text. Byte fallback covers characters
  unseen in training; digits are split one per token; no normalisation and no dummy prefix, so
  ``decode(encode(text)) == text``. ``vocab_size`` must exceed the 256 byte pieces, the special
  tokens and the distinct characters of ``texts``. The model is written to a temporary name
  and renamed to ``out_path`` (which should end in ``.model``).
  """
  model = io.BytesIO()
  sentencepiece.SentencePieceTrainer.train(
      sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size,
      model_type=model_type, user_defined_symbols=list(SPECIAL_TOKENS),
      unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1, byte_fallback=True, split_digits=True,
      normalization_rule_name="identity", add_dummy_prefix=False,
      remove_extra_whitespaces=False, allow_whitespace_only_pieces=True,
      character_coverage=1.0, seed_sentencepiece_size=seed_sentencepiece_size,
      max_sentence_length=max_sentence_length, num_threads=1, minloglevel=2)
  records.write_atomic(out_path, model.getvalue())
  return SentencePieceTokenizer(out_path)


def train_byte_level_bpe(texts: Iterable[str], vocab_size: int,
                         out_path: str | os.PathLike) -> HFTokenizer:
  """Trains a Qwen-style byte-level BPE ``tokenizer.json`` (tests, benchmarks, small models).

  Same pre-tokenizer split pattern as Qwen2's tokenizer, ByteLevel byte mapping, and the ChatML
  special tokens as added special tokens (ids 0, 1, 2). Written to a temp name and renamed.
  """
  qwen_split = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+"
                r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(tokenizers.Regex(qwen_split), behavior="isolated"),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
  ])
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                show_progress=False)
  tok.train_from_iterator(texts, trainer)
  records.write_atomic(out_path, tok.to_str(pretty=True))
  return HFTokenizer(out_path)
