"""Tokenizer from ``tokenizer.json`` (the ``tokenizers`` package) with incremental decoding."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer as _Tok

from atoll.core.errors import FailedPrecondition, SpecError, request_fault


def _failed(what: str, exc: BaseException) -> BaseException:
    """The error to raise for a tokenizer that failed: the tokenizers package reports a panic
    (a pattern in the model's tokenizer.json that its regex engine gives up on, say) as a
    BaseException that ``except Exception`` misses, and the request then hung until its deadline."""
    if isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit, Exception)) and \
            not type(exc).__name__.endswith("PanicException"):
        return exc
    return request_fault(FailedPrecondition(f"the model's tokenizer failed to {what} this text: {str(exc)[:200]}",
                                            hint="the model's tokenizer.json is faulty"))


class Tokenizer:
    """A ``tokenizers`` tokenizer: from a model directory's ``tokenizer.json``, or built elsewhere
    (a GGUF file's metadata) and wrapped with :meth:`wrap`."""

    def __init__(self, model_dir: str | Path):
        path = Path(model_dir) / "tokenizer.json"
        if not path.is_file():
            raise SpecError("tokenizer.json not found", source=str(model_dir),
                            hint="text prompts need tokenizer.json; pass token ids instead")
        try:
            self._tok = _Tok.from_file(str(path))
        except Exception as exc:
            raise SpecError(f"cannot load tokenizer: {exc}", source=str(path)) from None

    @classmethod
    def wrap(cls, tok: _Tok) -> "Tokenizer":
        self = cls.__new__(cls)
        self._tok = tok
        return self

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        try:
            return self._tok.encode(text, add_special_tokens=add_special_tokens).ids
        except BaseException as exc:           # a Rust panic (a model's own regex) is a BaseException
            raise _failed("encode", exc) from None

    def decode(self, ids: list[int], *, skip_special_tokens: bool = True) -> str:
        try:
            return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)
        except BaseException as exc:
            raise _failed("decode", exc) from None

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._tok.id_to_token(int(token_id))


class IncrementalDecoder:
    """Text of a growing token list, released in deltas that never end inside a UTF-8 sequence
    and never expose a prefix of a stop string that may still complete.

    Each update decodes only a short window: ``decode(ids[prefix:])`` minus
    ``decode(ids[prefix:read])`` is the new text (decoders that strip a leading space, or join
    bytes across tokens, see the same context as a full decode), so streaming is O(n), not O(n²).
    """

    def __init__(self, tok: Tokenizer | None, stop: list[str]):
        self.tok, self.stop = tok, stop
        self.full = ""          # decoded text of every token so far
        self.text = ""          # released-or-final text (cut at a stop string)
        self.sent = 0           # characters already released
        self.hold = max((len(s) for s in stop), default=1) - 1
        self._prefix = 0
        self._read = 0

    def update(self, ids: list[int], final: bool = False) -> tuple[str, bool]:
        """(new text to release, stop string hit)."""
        if self.tok is None:
            return "", False
        prefix_text = self.tok.decode(ids[self._prefix:self._read])
        new_text = self.tok.decode(ids[self._prefix:])
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            self.full += new_text[len(prefix_text):]
            self._prefix, self._read = self._read, len(ids)
        elif final and new_text.endswith("\ufffd"):
            self.full += new_text[len(prefix_text):]
        text, hit = self.full, False
        if self.stop:
            start = max(0, self.sent - self.hold)
            cut = min((i for i in (text.find(s, start) for s in self.stop) if i >= 0), default=-1)
            if cut >= 0:
                text, hit, final = text[:cut], True, True
        self.text = text
        limit = len(text) if final else max(self.sent, len(text) - self.hold)
        delta = text[self.sent:limit]
        self.sent = limit
        return delta, hit
