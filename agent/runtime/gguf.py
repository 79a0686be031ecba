"""GGUF model files: configuration, tokenizer, chat template and weights from one file.

The file is read with the ``gguf`` package. Tensors are dequantized to fp32 and then cast to the
serving dtype: F32, F16, BF16, Q8_0, Q4_0 and Q4_1 by the torch routines below (vectorized, one
pass per tensor); any other type the ``gguf`` package can dequantize (the K-quants, ...) through
its numpy routines. Block formats (32 values per block, little-endian):

- Q8_0: fp16 scale d, 32 int8 q: ``x = d · q``
- Q4_0: fp16 d, 16 bytes of nibbles (low nibbles are values 0-15, high 16-31): ``x = d · (q - 8)``
- Q4_1: fp16 d, fp16 m, 16 bytes of nibbles: ``x = d · q + m``

Tensor names are llama.cpp's (``blk.N.attn_q.weight`` ...), renamed to Hugging Face's so the same
:func:`~.weights.build_weights` serves both formats. llama.cpp's converter permutes the rows of a
Llama q/k projection (pairs of rotary halves interleaved, for its RoPE kernel); they are put back
here. Architectures served from GGUF: ``llama`` (which includes Mistral-style files), ``qwen2``
and ``qwen3``; others are refused by name.

The tokenizer is rebuilt from ``tokenizer.ggml.*``: a byte-level BPE (``gpt2``) from the tokens and
merges, split the way ``tokenizer.ggml.pre`` names, with the tokens marked CONTROL kept whole as
special tokens and a BOS added when ``add_bos_token`` says so.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize as gguf_dequantize
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors
from tokenizers import Tokenizer as _Tok

from atoll.core.errors import SpecError

from .config import ModelConfig
from .memory import check_fits

Q = GGMLQuantizationType
ARCHS = ("llama", "qwen2", "qwen3")
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_SPLITS = {"llama3": _LLAMA3_SPLIT, "llama-v3": _LLAMA3_SPLIT, "llama-bpe": _LLAMA3_SPLIT,
              "smaug-bpe": _LLAMA3_SPLIT, "qwen2": _QWEN2_SPLIT, "deepseek-r1-qwen": _QWEN2_SPLIT}
CONTROL = 3                 # tokenizer.ggml.token_type of a control (special) token
_LAYER_NAMES = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
                "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm",
                "attn_k_norm": "self_attn.k_norm", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                "ffn_down": "mlp.down_proj"}
_TOP_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
              "output.weight": "lm_head.weight"}


def find_gguf(path: str | Path) -> Path | None:
    """``path`` itself when it is a .gguf file, the one .gguf file in a directory that has no
    config.json, else None. A directory holding several raises (which one is meant?)."""
    p = Path(path)
    if p.is_file() and p.suffix == ".gguf":
        return p
    if p.is_dir() and not (p / "config.json").is_file():
        files = sorted(p.glob("*.gguf"))
        if len(files) > 1:
            raise SpecError(f"{len(files)} .gguf files: {', '.join(f.name for f in files)}", source=str(p),
                            hint="name the file itself")
        return files[0] if files else None
    return None


# ---- dequantization -------------------------------------------------------------------------

def _f16(b: torch.Tensor) -> torch.Tensor:
    """[N, 2] uint8 -> [N, 1] fp32 (little-endian fp16)."""
    return b.contiguous().view(torch.float16).float()


def dequantize(data: np.ndarray, qtype: Q, shape: tuple[int, ...]) -> torch.Tensor:
    """One tensor's raw GGUF data -> fp32 torch tensor of ``shape`` (rows, …, columns)."""
    data = np.array(data, copy=True)          # off the read-only memory map: torch wants to own it
    if qtype == Q.F32:
        return torch.from_numpy(data.astype(np.float32, copy=False)).reshape(shape)
    if qtype == Q.F16:
        return torch.from_numpy(data.view(np.float16)).float().reshape(shape)
    if qtype == Q.BF16:
        bits = data.view(np.uint16).astype(np.uint32) << 16
        return torch.from_numpy(bits.view(np.float32)).reshape(shape)
    if qtype in (Q.Q8_0, Q.Q4_0, Q.Q4_1):
        size = {Q.Q8_0: 34, Q.Q4_0: 18, Q.Q4_1: 20}[qtype]
        blocks = torch.from_numpy(data.view(np.uint8)).reshape(-1, size)
        d = _f16(blocks[:, 0:2])
        if qtype == Q.Q8_0:
            x = d * blocks[:, 2:].contiguous().view(torch.int8).float()
        else:
            qs = blocks[:, 4 if qtype == Q.Q4_1 else 2:]
            q = torch.cat([qs & 0x0F, qs >> 4], dim=1).float()
            if qtype == Q.Q4_0:
                x = d * (q - 8.0)
            else:
                m = _f16(blocks[:, 2:4])
                x = d * q + m
        return x.reshape(shape)
    return torch.from_numpy(np.ascontiguousarray(gguf_dequantize(data, qtype), dtype=np.float32)).reshape(shape)


# ---- the file ---------------------------------------------------------------------------------

@dataclass
class GGUFModel:
    path: Path
    cfg: ModelConfig
    tensors: dict[str, torch.Tensor]         # Hugging Face names, fp32
    tokenizer: _Tok | None
    chat_template: str | None
    special_tokens: dict[str, str]           # bos_token / eos_token / ... strings for the template


# GGUF value types: the size of one fixed-size item (8 string, 9 array are walked)
_ITEM_BYTES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_MAX_DIMS = 8


def check_header(path: Path) -> None:
    """Walk the file's header (its metadata and tensor table) with every count and length checked
    against the bytes that remain, before the ``gguf`` package reads it: that reader trusts the
    counts, and a 68-byte file declaring an array of 2^62 items sent it into an endless loop that
    grew memory by about 115 MB/s. SpecError naming the first bad field."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        size, at = len(m), 0

        def take(n: int, what: str) -> int:
            nonlocal at
            if n < 0 or n > size - at:
                raise SpecError(f"GGUF header: {what} declares {n} bytes where {size - at} remain", source=str(path))
            at += n
            return at - n

        def u(fmt: str, what: str) -> int:
            start = take(struct.calcsize(fmt), what)
            return struct.unpack_from(fmt, m, start)[0]

        def string(what: str) -> None:
            take(u("<Q", what), what)

        def value(vtype: int, what: str, depth: int = 0) -> None:
            if vtype in _ITEM_BYTES:
                take(_ITEM_BYTES[vtype], what)
            elif vtype == 8:
                string(what)
            elif vtype == 9 and depth < 2:
                itype, count = u("<I", what), u("<Q", what)
                if itype in _ITEM_BYTES:
                    take(count * _ITEM_BYTES[itype], what)
                elif count > (size - at) // 8:          # every other item takes 8 bytes at least
                    raise SpecError(f"GGUF header: {what} declares {count} items where {size - at} bytes remain",
                                    source=str(path))
                else:
                    for _ in range(count):
                        value(itype, what, depth + 1)
            else:
                raise SpecError(f"GGUF header: {what} has an unknown value type {vtype}", source=str(path))

        if bytes(m[:4]) != b"GGUF":
            raise SpecError("cannot read GGUF file: it does not start with the GGUF magic", source=str(path))
        take(4, "magic")
        u("<I", "version")
        n_tensors, n_kv = u("<Q", "tensor count"), u("<Q", "metadata count")
        if n_kv > size // 13 or n_tensors > size // 24:           # the smallest entries there can be
            raise SpecError(f"GGUF header: {n_kv} metadata entries and {n_tensors} tensors cannot fit in "
                            f"{size} bytes", source=str(path))
        for i in range(n_kv):
            string(f"metadata key {i}")
            value(u("<I", f"metadata value {i}"), f"metadata value {i}")
        for i in range(n_tensors):
            string(f"tensor {i} name")
            dims = u("<I", f"tensor {i} dimensions")
            if dims > _MAX_DIMS:
                raise SpecError(f"GGUF header: tensor {i} has {dims} dimensions", source=str(path))
            take(8 * dims + 4 + 8, f"tensor {i}")


def read_gguf(path: str | Path) -> GGUFModel:
    path = Path(path)
    try:
        check_header(path)
        reader = GGUFReader(str(path))
    except SpecError:
        raise
    except Exception as exc:     # the gguf package raises ValueError, struct errors, OSError ...
        raise SpecError(f"cannot read GGUF file: {exc}", source=str(path)) from None
    meta = _Meta(reader, path)
    arch = meta.get("general.architecture")
    if arch not in ARCHS:
        raise SpecError(f"GGUF architecture {arch!r} is not served from GGUF", source=str(path),
                        path="general.architecture",
                        hint=f"GGUF architectures served: {', '.join(ARCHS)}; other families load from a "
                             "Hugging Face directory")
    tok, special, vocab = _tokenizer(meta)
    cfg = _config(meta, arch, vocab, any(t.name == "output.weight" for t in reader.tensors))
    check_fits(sum(int(np.prod(t.shape.tolist(), dtype=np.int64)) for t in reader.tensors) * 4,
               "this GGUF model, dequantized to fp32,", str(path))
    tensors = _tensors(reader, cfg, arch)
    return GGUFModel(path, cfg, tensors, tok, meta.get("tokenizer.chat_template"), special)


class _Meta:
    def __init__(self, reader: GGUFReader, path: Path):
        self.fields, self.path = reader.fields, path

    def get(self, key: str, default=None):
        f = self.fields.get(key)
        return default if f is None else f.contents()

    def need(self, key: str):
        v = self.get(key)
        if v is None:
            raise SpecError("missing metadata key", source=str(self.path), path=key)
        return v


def _config(meta: _Meta, arch: str, vocab: int | None, has_output: bool) -> ModelConfig:
    a = arch + "."
    hidden, heads = int(meta.need(a + "embedding_length")), int(meta.need(a + "attention.head_count"))
    head_dim = int(meta.get(a + "attention.key_length") or hidden // heads)
    rope_dim = int(meta.get(a + "rope.dimension_count") or head_dim)
    scaling = meta.get(a + "rope.scaling.type")
    if scaling not in (None, "none"):
        raise SpecError(f"GGUF architecture {arch!r}: RoPE scaling {scaling!r} is not supported",
                        source=str(meta.path), path=a + "rope.scaling.type")
    eos = meta.get("tokenizer.ggml.eos_token_id")
    window = meta.get(a + "attention.sliding_window")
    raw = {"model_type": arch, "hidden_size": hidden, "num_attention_heads": heads,
           "num_key_value_heads": int(meta.get(a + "attention.head_count_kv") or heads), "head_dim": head_dim,
           "intermediate_size": int(meta.need(a + "feed_forward_length")),
           "num_hidden_layers": int(meta.need(a + "block_count")),
           "vocab_size": int(meta.get(a + "vocab_size") or vocab or 0) or None,
           "rms_norm_eps": float(meta.get(a + "attention.layer_norm_rms_epsilon", 1e-6)),
           "rope_theta": float(meta.get(a + "rope.freq_base", 10000.0)),
           "max_position_embeddings": int(meta.get(a + "context_length", 2048)),
           "tie_word_embeddings": not has_output, "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
           "eos_token_id": None if eos is None else int(eos),
           "sliding_window": None if window is None else int(window), "use_sliding_window": window is not None}
    if rope_dim != head_dim:
        raw["partial_rotary_factor"] = rope_dim / head_dim
    return ModelConfig.from_dict(raw, source=str(meta.path))


def _unpermute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Undo llama.cpp's q/k row permutation: rows (head, pair, half) -> (head, half, pair)."""
    dim = w.shape[0] // n_head // 2
    return w.reshape(n_head, dim, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def _hf_name(name: str) -> str | None:
    if name in _TOP_NAMES:
        return _TOP_NAMES[name]
    parts = name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[2] in _LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}.{parts[3]}"
    return None


def _tensors(reader: GGUFReader, cfg: ModelConfig, arch: str) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for t in reader.tensors:
        hf = _hf_name(t.name)
        if hf is None:
            if t.name == "rope_freqs.weight":
                raise SpecError(f"GGUF architecture {arch!r}: per-dimension RoPE frequencies (rope_freqs, "
                                "as llama3 scaling writes them) are not supported", path=t.name)
            continue
        shape = tuple(int(x) for x in reversed(t.shape.tolist()))
        w = dequantize(t.data, t.tensor_type, shape)
        if arch == "llama" and ".self_attn.q_proj.weight" in hf:
            w = _unpermute(w, cfg.num_heads)
        elif arch == "llama" and ".self_attn.k_proj.weight" in hf:
            w = _unpermute(w, cfg.num_kv_heads)
        out[hf] = w
    return out


def _tokenizer(meta: _Meta) -> tuple[_Tok | None, dict[str, str], int | None]:
    kind = meta.get("tokenizer.ggml.model")
    tokens = meta.get("tokenizer.ggml.tokens")
    if kind is None or tokens is None:
        return None, {}, None
    if kind != "gpt2":
        raise SpecError(f"GGUF tokenizer model {kind!r} is not supported (byte-level BPE 'gpt2' is)",
                        source=str(meta.path), path="tokenizer.ggml.model",
                        hint="pass token ids, or load the model from a Hugging Face directory")
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges") or []]
    tok = _Tok(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, ignore_merges=False))
    split = PRE_SPLITS.get(meta.get("tokenizer.ggml.pre"))
    if split is None:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), behavior="isolated"),
                                                     pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                                              use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    types = meta.get("tokenizer.ggml.token_type") or []
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True)
                            for t, ty in zip(tokens, types) if ty == CONTROL])
    special: dict[str, str] = {}
    for key, name in (("bos", "bos_token"), ("eos", "eos_token"), ("unknown", "unk_token"),
                      ("padding", "pad_token")):
        i = meta.get(f"tokenizer.ggml.{key}_token_id")
        if i is not None and 0 <= int(i) < len(tokens):
            special[name] = tokens[int(i)]
    if meta.get("tokenizer.ggml.add_bos_token") and "bos_token" in special:
        bos = special["bos_token"]
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                           special_tokens=[(bos, tok.token_to_id(bos))])
    return tok, special, len(tokens)
