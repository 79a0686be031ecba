"""Where a base model comes from: a Hugging Face directory or a GGUF file, opened alike.

:func:`open_model` reads the configuration, tokenizer, chat template and stop tokens at once and
defers the weights (:meth:`ModelSource.weights`) to the engine, which knows the dtype, device and
layout to serve them in.

- Hugging Face directory: ``config.json``, ``*.safetensors`` (sharded or not), ``tokenizer.json``
  (optional: without it only token-id prompts), ``tokenizer_config.json`` /
  ``chat_template.jinja`` (chat template), ``generation_config.json`` (EOS ids).
- GGUF: a ``.gguf`` file, or a directory holding exactly one (see :mod:`.gguf`).

Stop tokens of every request (unless it sets ``ignore_eos``): the EOS ids of ``config.json`` /
the GGUF metadata, those of ``generation_config.json``, and the chat template's end-of-turn
tokens (:mod:`.chat`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from .chat import ChatTemplate, generation_eos, template_from_dir
from .config import ModelConfig
from .gguf import find_gguf, read_gguf
from .tokenizer import Tokenizer
from .weights import ModelWeights, build_weights, load_weights


@dataclass
class ModelSource:
    path: Path
    format: str                          # "hf" | "gguf"
    cfg: ModelConfig
    tokenizer: Tokenizer | None
    chat_template: ChatTemplate | None
    _tensors: dict | None = None         # GGUF: dequantized fp32 tensors until weights() takes them

    @property
    def name(self) -> str:
        return self.path.stem if self.format == "gguf" else self.path.name

    def weights(self, *, dtype: torch.dtype, device: torch.device, packed: bool | str | None) -> ModelWeights:
        if self.format == "hf":
            return load_weights(self.path, self.cfg, dtype=dtype, device=device, packed=packed)
        tensors, self._tensors = self._tensors, None          # free the fp32 copies as they are cast
        return build_weights(tensors, self.cfg, dtype=dtype, device=device, packed=packed, source=str(self.path))


def open_model(path: str | Path) -> ModelSource:
    path = Path(path)
    gguf_file = find_gguf(path)
    if gguf_file is not None:
        g = read_gguf(gguf_file)
        tok = Tokenizer.wrap(g.tokenizer) if g.tokenizer is not None else None
        chat = ChatTemplate(g.chat_template, g.special_tokens, origin=str(gguf_file)) if g.chat_template else None
        cfg = _with_stops(g.cfg, (), chat, tok)
        return ModelSource(gguf_file, "gguf", cfg, tok, chat, g.tensors)
    cfg = ModelConfig.from_dir(path)
    tok = Tokenizer(path) if (path / "tokenizer.json").is_file() else None
    chat = template_from_dir(path)
    return ModelSource(path, "hf", _with_stops(cfg, generation_eos(path), chat, tok), tok, chat)


def _with_stops(cfg: ModelConfig, extra: tuple[int, ...], chat: ChatTemplate | None,
                tok: Tokenizer | None) -> ModelConfig:
    ids = list(cfg.eos_token_ids) + list(extra)
    if chat is not None and tok is not None:
        ids += [i for t in chat.end_of_turn_tokens() if (i := tok.token_to_id(t)) is not None]
    ids = [i for i in dict.fromkeys(ids) if 0 <= i < cfg.vocab_size]
    return dataclasses.replace(cfg, eos_token_ids=tuple(ids))
