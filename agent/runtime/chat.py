"""Chat templates: a model's own Jinja2 template rendered in a sandbox, and its end-of-turn stops.

Where the template comes from, first found wins: ``chat_template.jinja`` in the model directory,
``chat_template`` in ``tokenizer_config.json`` (a string, or a list of named templates of which
``default`` is used), or ``tokenizer.chat_template`` in a GGUF file's metadata. A model without
one gets :class:`~atoll.core.errors.FailedPrecondition` for chat requests, never a guessed
format.

Rendering matches Hugging Face's ``apply_chat_template``: an immutable sandboxed environment
(templates are untrusted code: no attribute access to Python internals, no mutation of the
caller's objects) with ``trim_blocks`` and ``lstrip_blocks``, the ``loopcontrols`` extension, a
``tojson`` filter that does not escape HTML, and the globals ``raise_exception`` and
``strftime_now``; the special tokens (``bos_token``, ``eos_token``, ...) are variables. The text is
then tokenized without adding special tokens (the template writes them).

Stops: a chat reply ends at the template's end-of-turn token. Known end-of-turn tokens that the
template writes and the vocabulary holds (ChatML's ``<|im_end|>``, Llama 3's ``<|eot_id|>``,
Gemma's ``<end_of_turn>``, Phi-3's ``<|end|>``, ...) join the model's EOS ids from
``generation_config.json`` / ``config.json`` as stop tokens.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime
from pathlib import Path

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from atoll.core.errors import FailedPrecondition, InvalidArgument, SpecError

END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>", "<|eom_id|>",
                      "</s>", "<|end_of_text|>", "<|return|>")
MAX_MESSAGES = 4096


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt):
    return datetime.now().strftime(fmt)


# What one render may cost: a template comes with a model a tenant pushed, and runs on a host
# other tenants' requests pass through. Output past MAX_RENDER_CHARS, a '*' or '**' making a value
# past it, or a render past MAX_RENDER_S (checked at every call the template makes, so nested
# loops are caught) is refused. Before, one chat request froze an agent 21 s (its coordinator
# marked it LOST), a render made 1 GiB of text, and two nested range(100000) loops were accepted.
MAX_RENDER_CHARS = 4_000_000
MAX_RENDER_S = 2.0


class _BoundedSandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**"})

    def __init__(self, **kw):
        super().__init__(**kw)
        self._render = threading.local()         # each thread's render under way: its deadline

    def start(self) -> None:
        self._render.deadline = time.monotonic() + MAX_RENDER_S

    def _in_time(self) -> None:
        if time.monotonic() > getattr(self._render, "deadline", float("inf")):
            raise jinja2.exceptions.SecurityError(f"the render took more than {MAX_RENDER_S:g} s")

    def call_binop(self, context, operator, left, right):
        self._in_time()
        if operator == "**" and isinstance(right, (int, float)) and abs(right) > 64:
            raise jinja2.exceptions.SecurityError("an exponent above 64")
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and n * len(seq) > MAX_RENDER_CHARS:
                    raise jinja2.exceptions.SecurityError(f"a repetition past {MAX_RENDER_CHARS} items")
        return super().call_binop(context, operator, left, right)

    def call(self, __context, __obj, *args, **kwargs):
        self._in_time()
        return super().call(__context, __obj, *args, **kwargs)


class ChatTemplate:
    """One compiled template and the special-token strings it may use."""

    def __init__(self, source: str, special_tokens: dict[str, str] | None = None, *, origin: str = "template"):
        env = _BoundedSandbox(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
        self._env = env
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        try:
            self._template = env.from_string(source)
        except jinja2.exceptions.TemplateError as exc:
            raise SpecError(f"the chat template does not compile: {exc}", source=origin) from None
        self.source, self.origin = source, origin
        self.special_tokens = dict(special_tokens or {})

    def render(self, messages: list[dict], *, add_generation_prompt: bool = True, **extra) -> str:
        """The prompt text for ``messages`` ([{"role": ..., "content": ...}, ...])."""
        _check_messages(messages)
        env = self._env
        try:
            env.start()
            out, n = [], 0
            for piece in self._template.generate(messages=messages, add_generation_prompt=add_generation_prompt,
                                                 **self.special_tokens, **extra):
                n += len(piece)
                if n > MAX_RENDER_CHARS:
                    raise jinja2.exceptions.SecurityError(f"the prompt grew past {MAX_RENDER_CHARS} characters")
                env._in_time()
                out.append(piece)
            return "".join(out)
        except jinja2.exceptions.SecurityError as exc:
            raise InvalidArgument(f"the chat template was refused an unsafe operation: {exc}") from None
        except jinja2.exceptions.TemplateError as exc:
            raise InvalidArgument(f"the chat template rejected these messages: {exc}") from None

    def end_of_turn_tokens(self) -> list[str]:
        """Known end-of-turn tokens this template writes."""
        return [t for t in END_OF_TURN_TOKENS if t in self.source]


def _check_messages(messages) -> None:
    if not isinstance(messages, (list, tuple)) or not messages:
        raise InvalidArgument("messages must be a non-empty list of {role, content} objects")
    if len(messages) > MAX_MESSAGES:
        raise InvalidArgument(f"{len(messages)} messages: at most {MAX_MESSAGES} are accepted")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or "content" not in m:
            raise InvalidArgument(f"messages[{i}] must be an object with a string 'role' and a 'content'")


def _token_string(value) -> str | None:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def template_from_dir(model_dir: Path) -> ChatTemplate | None:
    """The chat template of a Hugging Face model directory, or None when it has none."""
    tok_cfg_path = model_dir / "tokenizer_config.json"
    tok_cfg: dict = {}
    if tok_cfg_path.is_file():
        try:
            tok_cfg = json.loads(tok_cfg_path.read_text())
        except (OSError, ValueError) as exc:
            raise SpecError(f"cannot parse JSON: {exc}", source=str(tok_cfg_path)) from None
    special = {k: s for k in ("bos_token", "eos_token", "unk_token", "pad_token")
               if (s := _token_string(tok_cfg.get(k))) is not None}
    jinja_file = model_dir / "chat_template.jinja"
    if jinja_file.is_file():
        return ChatTemplate(jinja_file.read_text(), special, origin=str(jinja_file))
    source = tok_cfg.get("chat_template")
    if isinstance(source, list):              # named templates: the default one
        named = {t.get("name"): t.get("template") for t in source if isinstance(t, dict)}
        source = named.get("default")
    if isinstance(source, str) and source:
        return ChatTemplate(source, special, origin=str(tok_cfg_path))
    return None


def no_template_error(model: str) -> FailedPrecondition:
    return FailedPrecondition(f"the model {model} has no chat template, so chat messages cannot be formatted",
                              hint="send a plain text prompt (completions), or use a model whose "
                                   "tokenizer_config.json, chat_template.jinja or GGUF metadata holds one")


def generation_eos(model_dir: Path) -> tuple[int, ...]:
    """EOS ids from ``generation_config.json`` (an int or a list), or () without one."""
    path = model_dir / "generation_config.json"
    if not path.is_file():
        return ()
    try:
        eos = json.loads(path.read_text()).get("eos_token_id")
    except (OSError, ValueError) as exc:
        raise SpecError(f"cannot parse JSON: {exc}", source=str(path)) from None
    if isinstance(eos, list):
        return tuple(int(e) for e in eos)
    return () if eos is None else (int(eos),)
