"""`Model`: a GGUF file loaded onto a backend, with tokenizer, chat template and generation.

Two layers: fastllm.runner's Runner runs token ids through the network in the model's slots
(prefill, decode steps, cache reuse, saved states); Model adds what is about the file and text
on top: loading, metadata, tokenizing, and the generate / chat front-end."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from .backends import create_backend
from .backends.base import Backend, KVSpec
from .errors import BackendError, GGUFError
from .generate import generate_text, generate_token_ids
from .gguf import GGUFFile, open_gguf
from .models import architecture_for
from .models.base import Architecture
from .runner import Runner
from .tokenizer import Tokenizer
from .tokenizer.ids_only import for_model as tokenizer_for_model

DEFAULT_N_CTX = 4096
DEFAULT_N_BATCH = 512


class Model(Runner):
    """A loaded model. Create with `Model.load(path)`."""

    def __init__(self, file: GGUFFile, arch: Architecture, tokenizer: Tokenizer,
                 backend: Backend, kv_spec: KVSpec, n_batch: int, load_seconds: float,
                 state_checkpoints: int = 0):
        # the network, its slots and their caches: fastllm.runner
        super().__init__(arch, backend, kv_spec, n_batch, state_checkpoints)
        self.file = file
        self.path = file.path
        self.tokenizer = tokenizer
        self.load_seconds = load_seconds
        self._chat = None

    # -- loading -------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike, backend: str | Backend | None = None,
             n_ctx: int | None = None,
             n_batch: int = DEFAULT_N_BATCH, n_seq: int = 1, quiet: bool = False,
             adapter: int | None = None, state_checkpoints: int = 0) -> Model:
        """Load a GGUF model. `backend`: "reference", "webgpu", "metal" or None (the best one
        available). `n_ctx`: context length; None means min(training context, 4096) (recurrent
        models: the training context), per sequence. `n_seq`: how many sequences the model
        holds at once (slots, each with its own cache of n_ctx positions or its own recurrent
        state), for fastllm.Engine and lists of prompts; memory grows n_seq times. A known
        model name (e.g. "smollm2-135m") that is not a file is pulled first; a file name in the
        cache (`fastllm list`) is found there. `quiet`: no progress bars (shown on a terminal
        when a download, or loading the weights, takes more than a second). `adapter`: the
        index of the WebGPU adapter to run on, for a machine with several GPUs (default:
        FASTLLM_WEBGPU_ADAPTER, else wgpu's choice; `fastllm --version` lists them in order).
        `state_checkpoints`: for models with a recurrent state (RWKV, Qwen3.5's DeltaNet layers),
        how many copies of a slot's state to keep at the prefill chunk boundaries (every n_batch
        tokens and the prompt's end; the last N kept, as llama.cpp's --ctx-checkpoints): a
        prompt that shares a prefix with the slot's tokens but leaves them (a chat's next turn
        whose template renders the last reply differently) resumes from the longest checkpoint
        it extends instead of reading everything again. Each costs a copy of the state in host
        memory; 0: none."""
        from . import progress
        from .pull import resolve

        t0 = time.perf_counter()
        f = open_gguf(os.fspath(resolve(path, quiet=quiet)))
        arch_cls = architecture_for(f.architecture, f.path)
        cfg = arch_cls.config(f.metadata, f.path)
        # a tokenizer model fastllm does not build (llama.cpp's "none", "test") runs on ids
        tok = tokenizer_for_model(f.metadata, f.path)
        if cfg.n_vocab == 0:
            cfg.n_vocab = tok.n_vocab
        if cfg.n_layer > len(f.tensors):  # each layer has tensors of its own
            raise GGUFError(f"{f.path}: metadata key '{cfg.arch}.block_count' says {cfg.n_layer} "
                            f"layers, more than the file's {len(f.tensors)} tensors can hold")
        # every tensor used or on the architecture's ignored list, none missing (GGUFError), and
        # the per-tensor scales read: before anything is allocated
        arch_cls.check_tensors(cfg, f)
        emb = f.tensor("token_embd.weight")
        if emb.shape != (cfg.n_vocab, cfg.n_embd):
            raise GGUFError(f"{f.path}: tensor 'token_embd.weight' has shape {emb.shape}, "
                            f"expected {(cfg.n_vocab, cfg.n_embd)}")
        if n_ctx is None:
            # a recurrent state does not grow with the context: only the training length bounds it
            n_ctx = cfg.n_ctx_train if arch_cls.recurrent else min(cfg.n_ctx_train, DEFAULT_N_CTX)
        if not isinstance(n_ctx, int) or n_ctx < 1:
            raise ValueError(f"n_ctx must be a positive int, got {n_ctx!r}")
        if isinstance(n_seq, bool) or not isinstance(n_seq, int) or n_seq < 1:
            raise ValueError(f"n_seq must be a positive int, got {n_seq!r}")
        if (isinstance(state_checkpoints, bool) or not isinstance(state_checkpoints, int)
                or state_checkpoints < 0):
            raise ValueError(f"state_checkpoints must be an int >= 0, got {state_checkpoints!r}")
        n_batch = max(1, min(n_batch, n_ctx))
        be = create_backend(backend, adapter)
        try:
            infos = arch_cls.weight_infos(cfg, f)  # fused tensors as their parts
            weights = {name: be.load_weight(info) for name, info in
                       progress.tensors(infos, os.path.basename(f.path), quiet)}
            net = arch_cls(cfg, weights)
            try:
                # recording the decode graph checks every tensor's shape against the config:
                # a file whose tensors disagree fails here, not at its first token
                net.build(1, False)
            except GGUFError as e:
                raise GGUFError(f"{f.path}: {e}") from None
            spec = dataclasses.replace(net.kv_spec(n_ctx, n_batch), n_seq=n_seq)
            try:
                be.init_kv(spec)
            except BackendError as e:
                if n_seq == 1:
                    raise
                raise BackendError(f"the caches of n_seq={n_seq} sequences of n_ctx={n_ctx} "
                                   f"positions do not fit the device ({e}); load with a smaller "
                                   f"n_seq or n_ctx") from None
        except BaseException:
            be.close()  # nothing half-loaded stays on the device
            raise
        return cls(f, net, tok, be, spec, n_batch, time.perf_counter() - t0, state_checkpoints)

    def __enter__(self) -> Model:  # noqa: PYI034 (typing.Self needs Python 3.11)
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- metadata ------------------------------------------------------------------------------
    @property
    def metadata(self) -> dict[str, Any]:
        """Every GGUF metadata key of the file."""
        return self.file.metadata

    def __repr__(self) -> str:
        path = getattr(self.backend, "decode_path", None)  # GPU backends: the decoding loop's
        return (f"Model({os.path.basename(self.path)!r}, arch={self.config.arch}, "
                f"backend={self.backend.describe()}, n_ctx={self.n_ctx}"
                + (f", decode={path}" if path else "") + ")")

    # -- tokens --------------------------------------------------------------------------------
    def tokenize(self, text: str, add_bos: bool = True, special: bool = False) -> list[int]:
        """Token ids of text. add_bos adds BOS/EOS exactly when the metadata asks for them."""
        return self.tokenizer.encode(text, add_bos=add_bos, special=special)

    def detokenize(self, ids: Sequence[int]) -> str:
        """Text of token ids (control tokens are not rendered)."""
        return self.tokenizer.decode(ids)

    # -- generation ----------------------------------------------------------------------------
    def prompt_ids(self, prompt: str | Sequence[int]) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenize(prompt, add_bos=True, special=True)
        return [int(t) for t in prompt]

    def generate_tokens(self, prompt: str | Sequence[int], **sampling) -> Iterator[int]:
        """Generated token ids, one at a time (end-of-generation tokens end it, unyielded).
        Sampling arguments as for generate()."""
        return generate_token_ids(self, self.prompt_ids(prompt), **sampling)

    def generate(self, prompt: str | Sequence[int], max_tokens: int = 256,
                 temperature: float = 0.8, top_k: int = 40, top_p: float = 0.95,
                 min_p: float = 0.05, repeat_penalty: float = 1.0, seed: int | None = None,
                 stop: str | Sequence[str] | None = None, stream: bool = False,
                 json_schema: Any = None, regex: str | None = None, grammar: str | None = None):
        """The continuation of prompt as text (or, with stream=True, an iterator of pieces whose
        concatenation is that text). Stops at end-of-generation tokens, at any `stop` string
        (not included), at max_tokens, or when the context is full. temperature=0 is greedy.

        json_schema (a dict or its JSON text), regex or grammar (Lark, or llama.cpp's GBNF)
        constrain the output (fastllm.constrain): a bad one is an ArgumentError before anything
        runs; an output that max_tokens or the context cut short ends with finish_reason
        "incomplete".

        A list of prompts (texts, or lists of token ids) gives a list of texts in the same
        order: generated together by a fastllm.Engine when the model holds several sequences
        (Model.load(..., n_seq=N)), else one after another; each as it would be alone."""
        cons = {"json_schema": json_schema, "regex": regex, "grammar": grammar}
        if _is_batch(prompt):
            if stream:
                raise ValueError("stream=True takes one prompt, not a list (use fastllm.Engine "
                                 "to stream several)")
            kw = {"stop": stop, "max_tokens": max_tokens, "temperature": temperature,
                  "top_k": top_k, "top_p": top_p, "min_p": min_p,
                  "repeat_penalty": repeat_penalty, "seed": seed,
                  **{k: v for k, v in cons.items() if v is not None}}
            if self.n_seq > 1 and len(prompt) > 1:
                from .engine import run_all

                return run_all(self, list(prompt), **kw)
            return [self.generate(p, **kw) for p in prompt]
        if any(v is not None for v in cons.values()):
            from . import structured
            from .constrain import compile_constraint

            c = compile_constraint(self.tokenizer, self.n_vocab, **cons)
            return structured.generate(self, prompt, c, stream, stop=stop,
                                       max_tokens=max_tokens, temperature=temperature,
                                       top_k=top_k, top_p=top_p, min_p=min_p,
                                       repeat_penalty=repeat_penalty, seed=seed)
        it = generate_text(self, self.prompt_ids(prompt), stop=stop, max_tokens=max_tokens,
                           temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                           repeat_penalty=repeat_penalty, seed=seed)
        return it if stream else "".join(it)

    def chat(self, messages: Sequence[dict], tools: Sequence[dict] | None = None,
             tool_choice: Any = None, **sampling):
        """Reply to a conversation (list of {"role", "content"}) rendered with the model's chat
        template; arguments as for generate() (json_schema, regex, grammar included). A list of
        conversations gives a list of replies (generated together where the model holds
        several sequences).

        tools (OpenAI's [{"type": "function", "function": {"name", "description",
        "parameters"}}]) are rendered by the template, and the reply is OpenAI's assistant
        message {"role": "assistant", "content": ..., "tool_calls": [...]} (stream=True: an
        iterator of OpenAI's deltas); tool_choice "auto" (default), "none", "required" or
        {"type": "function", "function": {"name": ...}} (the last two enforced by a grammar).
        Tool results go back in as {"role": "tool", "tool_call_id", "content"} messages
        (fastllm.tools)."""
        if tools is not None:
            from . import structured
            from .constrain import compile_constraint

            stream = sampling.pop("stream", False)
            cons = {k: sampling.pop(k, None) for k in ("json_schema", "regex", "grammar")}
            c = compile_constraint(self.tokenizer, self.n_vocab, **cons)
            return structured.chat(self, messages, tools, tool_choice, stream, c, **sampling)
        if tool_choice is not None:
            raise ValueError("tool_choice needs tools")
        if (isinstance(messages, (list, tuple)) and messages
                and all(isinstance(c, (list, tuple)) for c in messages)):
            return self.generate([self.chat_prompt(c) for c in messages], **sampling)
        from .tools import tool_format

        if tool_format(self.chat_template().source) == "harmony":
            # gpt-oss answers in channels: the reply is its content, without the reasoning
            from . import structured
            from .constrain import compile_constraint

            stream = sampling.pop("stream", False)
            cons = {k: sampling.pop(k, None) for k in ("json_schema", "regex", "grammar")}
            c = compile_constraint(self.tokenizer, self.n_vocab, **cons)
            return structured.channel_chat(self, messages, stream, c, **sampling)
        return self.generate(self.chat_prompt(messages), **sampling)

    def chat_template(self):
        """The model's fastllm.chat.ChatTemplate (its file's, or ChatML)."""
        from .chat import ChatTemplate

        if self._chat is None:
            self._chat = ChatTemplate.from_metadata(self.metadata, self.tokenizer)
        return self._chat

    def chat_prompt(self, messages: Sequence[dict], **template_args: Any) -> list[int]:
        """Token ids of messages rendered with the chat template, ready for the assistant;
        template_args (tools=..., enable_thinking=...) go to the template."""
        text = self.chat_template().render(list(messages), add_generation_prompt=True,
                                           **template_args)
        ids = self.tokenize(text, add_bos=True, special=True)
        bos = self.tokenizer.bos_id
        if len(ids) > 1 and ids[0] == bos and ids[1] == bos:
            ids = ids[1:]  # the template wrote BOS itself: do not double it (llama.cpp warns)
        return ids


def _is_batch(prompt: Any) -> bool:
    """A list of prompts (texts or token-id lists), not one prompt of token ids."""
    return (isinstance(prompt, (list, tuple)) and len(prompt) > 0
            and all(isinstance(p, (str, list, tuple, np.ndarray)) for p in prompt))
