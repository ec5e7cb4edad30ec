"""`fastllm chat`: a conversation in the terminal.

Ctrl-C during a reply stops the reply and keeps the conversation (as llama.cpp's and ollama's
chats do); Ctrl-D, /bye, /exit or /quit leave; /reset forgets the conversation; /help lists the
commands. Replies go to stdout, everything else to stderr.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable

from .errors import ContextOverflowError, FastLLMError

HELP = """\
/help          this list
/reset         forget the conversation (the --system message stays)
/bye           leave (also /exit, /quit or Ctrl-D)
Ctrl-C         stop a reply; the conversation stays
"""
_LEAVE = ("/bye", "/exit", "/quit")


class StopOnInterrupt:
    """Within the block, the first Ctrl-C (SIGINT) sets `hit` instead of raising: the reply ends
    cleanly at its next piece and the model's cache stays consistent with what it was given. A
    second Ctrl-C raises KeyboardInterrupt at once, for a backend slow to reach its next piece."""

    def __init__(self):
        self.hit = False
        self._old = None

    def _handler(self, signum, frame):
        if self.hit:
            raise KeyboardInterrupt
        self.hit = True

    def __enter__(self) -> StopOnInterrupt:  # noqa: PYI034 (typing.Self needs Python 3.11)
        self.hit = False
        try:
            self._old = signal.signal(signal.SIGINT, self._handler)
        except ValueError:  # not the main thread: Ctrl-C cannot reach us there anyway
            self._old = None
        return self

    def __exit__(self, *exc) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def _reply(model, messages: list[dict], sampling: dict, out) -> tuple[str, object, bool]:
    """Stream the model's reply to out: (its text, the Generation, whether it was stopped by
    Ctrl-C)."""
    pieces: list[str] = []
    gen = None
    with StopOnInterrupt() as stop:
        try:
            gen = model.chat(messages, stream=True, **sampling)
            for piece in gen:
                pieces.append(piece)
                out.write(piece)
                out.flush()
                if stop.hit:
                    break
        except KeyboardInterrupt:  # the second Ctrl-C, inside the model: its cache is unknown
            model.reset()
            stop.hit = True
        finally:
            if gen is not None:
                gen.close()
    return "".join(pieces), gen, stop.hit


def chat_loop(model, a, sampling: dict, say: Callable[[object, str], None],
              read: Callable[[str], str] = input, out=sys.stdout,
              flags: Callable[[str], str] = str) -> int:
    """The conversation: read a line, answer it, until the user leaves. `flags` puts a library
    message in the command line's words (cli.py passes its own; this module does not import
    the one above it)."""
    try:
        import readline  # noqa: F401 (line editing and history for input())
    except ImportError:
        pass
    system = [{"role": "system", "content": a.system}] if a.system else []
    messages = list(system)
    say(a, "chat: /help for commands, Ctrl-C stops a reply, Ctrl-D or /bye leaves")
    while True:
        try:
            line = read("> ")
        except EOFError:  # Ctrl-D: end the prompt's line before the shell's prompt comes back
            out.write("\n")
            return 0
        except KeyboardInterrupt:  # at the prompt: ollama's answer, not an exit
            out.write("\n")
            print("(Ctrl-D or /bye leaves)", file=sys.stderr)
            continue
        text = line.strip()
        if not text:
            continue
        word = text.split()[0]
        if word in _LEAVE:
            return 0
        if word == "/help":
            sys.stderr.write(HELP)
            continue
        if word == "/reset":
            messages = list(system)
            model.reset()
            print("(conversation forgotten)", file=sys.stderr)
            continue
        if word.startswith("/") and " " not in text:
            print(f"unknown command {word}; /help lists the commands", file=sys.stderr)
            continue
        messages.append({"role": "user", "content": line})
        try:
            reply, gen, stopped = _reply(model, messages, sampling, out)
        except ContextOverflowError as e:
            messages.pop()
            print(f"fastllm: the conversation no longer fits the context ({flags(str(e))}); "
                  f"/reset starts over", file=sys.stderr)
            continue
        except FastLLMError as e:
            messages.pop()
            print(f"fastllm: error: {flags(str(e))}", file=sys.stderr)
            continue
        out.write("\n")
        out.flush()
        messages.append({"role": "assistant", "content": reply})
        if stopped:
            print("(reply stopped)", file=sys.stderr)
        elif gen.finish_reason == "length":
            print(f"(reply cut at -n {a.n_predict} tokens)", file=sys.stderr)
        elif gen.finish_reason == "context":
            print("(the context is full: /reset starts over, -c enlarges it)", file=sys.stderr)
