"""Tokenizers that round-trip text exactly: byte-level BPE (HF `tokenizer.json`, or GPT-2 vocab.json + merges.txt)
and SentencePiece (`.model`, identity normalisation, byte fallback)."""

import json
import os
from typing import List, Optional

from megatron_lite.errors import UserError
from megatron_lite.files import atomic_write

EOD_TOKEN = "<|endoftext|>"
TOKENIZER_TYPES = ("HFTokenizer", "GPT2BPETokenizer", "SPMTokenizer")


class Tokenizer:
    """Wraps a `tokenizers.Tokenizer`; ids include special tokens, and decode keeps every character."""

    def __init__(self, tok, source: str):
        self._tok = tok
        eod = tok.token_to_id(EOD_TOKEN)
        if eod is None:
            raise UserError(f"{source} has no '{EOD_TOKEN}' token (needed as the end-of-document id)")
        self.eod = eod
        vocab = tok.get_vocab(with_added_tokens=True)
        self.vocab_size = max(len(vocab), max(vocab.values()) + 1)

    @property
    def hf(self):
        """The underlying `tokenizers.Tokenizer`."""
        return self._tok

    def special_id(self, token: str) -> Optional[int]:
        """The id of a special token such as a FIM sentinel, or None."""
        return self._tok.token_to_id(token)

    def encode(self, text: str) -> List[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: List[str]) -> List[List[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids) -> str:
        # Special tokens are kept so that a literal '<|endoftext|>' in the text comes back too.
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)


class SentencePieceTokenizer:
    """Wraps a `sentencepiece` model; `hf` is None (no HF or tiktoken engine applies)."""

    hf = None

    def __init__(self, path: str):
        import sentencepiece as spm

        try:
            self._sp = spm.SentencePieceProcessor(model_file=path)
        except Exception as e:  # sentencepiece raises RuntimeError / OSError for anything it cannot parse
            raise UserError(f"vocab-file '{path}' is not a sentencepiece .model ({_first_line(e)})") from None
        self.eod = self._sp.piece_to_id(EOD_TOKEN)
        if self.eod == self._sp.unk_id():
            raise UserError(f"vocab-file '{path}' has no '{EOD_TOKEN}' piece (needed as the end-of-document id)")
        self.vocab_size = self._sp.get_piece_size()

    def special_id(self, token: str) -> Optional[int]:
        """The id of a user-defined piece such as a FIM sentinel, or None."""
        i = self._sp.piece_to_id(token)
        return None if i == self._sp.unk_id() else i

    def encode(self, text: str) -> List[int]:
        return self._sp.encode(text)

    def encode_batch(self, texts: List[str]) -> List[List[int]]:
        return self._sp.encode(list(texts))

    def decode(self, ids) -> str:
        return self._sp.decode([int(i) for i in ids])


def _check_file(path: Optional[str], key: str, what: str) -> str:
    if not path:
        raise UserError(f"'{key}' is not set: the tokenizer needs {what}")
    if not os.path.exists(path):
        raise UserError(f"{key} '{path}' does not exist (expected {what})")
    if not os.path.isfile(path):
        raise UserError(f"{key} '{path}' is not a file (expected {what})")
    if not os.access(path, os.R_OK):
        raise UserError(f"{key} '{path}' is not readable")
    return path


def _byte_level(tok):
    """Make a tokenizer lossless byte-level BPE: no normalizer, no prefix space, byte-level decoder."""
    from tokenizers import decoders, pre_tokenizers

    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = None
    return tok


def _load_hf(vocab_file: Optional[str]) -> Tokenizer:
    from tokenizers import Tokenizer as HFTok

    path = _check_file(vocab_file, "vocab-file", "a Hugging Face tokenizers 'tokenizer.json'")
    try:
        tok = HFTok.from_file(path)
    except Exception as e:  # the tokenizers library raises bare Exceptions for any malformed file
        raise UserError(f"vocab-file '{path}' is not a tokenizers tokenizer.json ({_first_line(e)})") from None
    return Tokenizer(tok, f"vocab-file '{path}'")


def _load_gpt2(vocab_file: Optional[str], merge_file: Optional[str]) -> Tokenizer:
    from tokenizers import AddedToken
    from tokenizers import Tokenizer as HFTok
    from tokenizers.models import BPE

    vocab = _check_file(vocab_file, "vocab-file", "a GPT-2 BPE vocab.json")
    try:
        with open(vocab, encoding="utf-8") as f:
            vocab_map, problem = json.load(f), None
    except (ValueError, UnicodeDecodeError) as e:
        vocab_map, problem = None, _first_line(e)
    if isinstance(vocab_map, dict) and "model" in vocab_map:  # a whole tokenizer.json, typed by GPT-NeoX's default
        raise UserError(f"vocab-file '{vocab}' is a tokenizers tokenizer.json: set tokenizer-type: HFTokenizer "
                        "(GPT2BPETokenizer, GPT-NeoX's default, reads a vocab.json with a merges.txt)")
    merges = _check_file(merge_file, "merge-file", "a GPT-2 BPE merges.txt")
    if problem is None and (not isinstance(vocab_map, dict) or not all(isinstance(v, int) for v in vocab_map.values())):
        problem = "not a JSON object of token -> id"
    if problem:
        raise UserError(f"vocab-file '{vocab}' is not a GPT-2 vocab.json ({problem})")
    try:
        model = BPE.from_file(vocab, merges)
    except Exception as e:
        raise UserError(f"merge-file '{merges}' (with vocab-file '{vocab}') is not a GPT-2 merges.txt "
                        f"({_first_line(e)})") from None
    tok = _byte_level(HFTok(model))
    tok.add_special_tokens([AddedToken(EOD_TOKEN, special=True, normalized=False)])
    return Tokenizer(tok, f"vocab-file '{vocab}'")


def _first_line(e: Exception) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


def build_tokenizer(tokenizer_type: str, vocab_file: Optional[str], merge_file: Optional[str] = None) -> Tokenizer:
    """HFTokenizer (vocab_file = tokenizer.json), GPT2BPETokenizer (vocab.json + merges.txt), SPMTokenizer (.model)."""
    if tokenizer_type == "HFTokenizer":
        return _load_hf(vocab_file)
    if tokenizer_type == "GPT2BPETokenizer":
        return _load_gpt2(vocab_file, merge_file)
    if tokenizer_type == "SPMTokenizer":
        return SentencePieceTokenizer(_check_file(vocab_file, "vocab-file", "a sentencepiece .model"))
    raise UserError(f"tokenizer-type '{tokenizer_type}' is unknown; valid: {', '.join(TOKENIZER_TYPES)}")


def train_byte_level_bpe(texts, vocab_size: int, length: Optional[int] = None, extra_special=()):
    """Train a lossless byte-level BPE (`tokenizers.Tokenizer`) with special tokens EOD_TOKEN + extra_special."""
    from tokenizers import Tokenizer as HFTok
    from tokenizers import pre_tokenizers, trainers
    from tokenizers.models import BPE

    tok = _byte_level(HFTok(BPE()))
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOD_TOKEN, *extra_special], show_progress=False,
        # every byte is in the vocabulary, so any text (any unicode) encodes without unknown tokens
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer, length=length)
    return tok


def save_tokenizer(tok, out_dir: str) -> None:
    """Write tokenizer.json, vocab.json and merges.txt into out_dir, each via a temporary name and a rename."""
    import shutil
    import tempfile

    os.makedirs(out_dir, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".tokenizer-", dir=out_dir)
    try:
        tok.save(os.path.join(staging, "tokenizer.json"))
        tok.model.save(staging)  # vocab.json + merges.txt, for GPT2BPETokenizer
        for name in ("vocab.json", "merges.txt", "tokenizer.json"):
            os.replace(os.path.join(staging, name), os.path.join(out_dir, name))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


SPM_PIECE_BYTES = 8192  # sentencepiece trains on "sentences"; documents are cut at line ends to pieces this long


def _spm_pieces(texts):
    for text in texts:
        piece = ""
        for line in text.splitlines(keepends=True):
            if piece and len(piece) + len(line) > SPM_PIECE_BYTES:
                yield piece
                piece = ""
            piece += line
        if piece:
            yield piece


def train_sentencepiece(texts, vocab_size: int, out_dir: str, extra_special=()) -> None:
    """Train a lossless BPE sentencepiece model into out_dir/tokenizer.model (temporary name, then rename)."""
    import io

    import sentencepiece as spm

    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=_spm_pieces(texts), model_writer=model, vocab_size=vocab_size, model_type="bpe",
            # keep every character: no normalisation, no added or collapsed spaces, unknown bytes as byte pieces
            normalization_rule_name="identity", add_dummy_prefix=False, remove_extra_whitespaces=False,
            allow_whitespace_only_pieces=True, split_digits=False, byte_fallback=True, character_coverage=0.9999,
            max_sentence_length=4 * SPM_PIECE_BYTES, user_defined_symbols=[EOD_TOKEN, *extra_special],
            bos_id=-1, eos_id=-1, unk_id=0, minloglevel=2, num_threads=os.cpu_count() or 1)
    except RuntimeError as e:
        raise UserError(f"sentencepiece training failed: {_first_line(e)}") from None
    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(model.getvalue())

    atomic_write(os.path.join(out_dir, "tokenizer.model"), write)
