"""`fastllm chat`: in a real terminal (pexpect: Ctrl-C during a reply, /help, Ctrl-D) and
in-process (the conversation a reply stopped by Ctrl-C leaves, the commands, a conversation
that outgrows the context), on stories260K with the reference backend."""

from __future__ import annotations

import argparse
import io
import os
import signal
import sys

import pytest

from fastllm import Model
from fastllm.chat_cli import chat_loop
from fastllm.cli import _flags


def _args(**kw) -> argparse.Namespace:
    return argparse.Namespace(**{"system": None, "n_predict": -1, "quiet": True, **kw})


SAMPLING = {"max_tokens": 40, "temperature": 0}


class Spy:
    """The model, recording the conversations it is asked to answer and its resets."""

    def __init__(self, m: Model):
        self.m = m
        self.asked: list[list[dict]] = []
        self.resets = 0

    def chat(self, messages, **kw):
        self.asked.append([dict(x) for x in messages])
        return self.m.chat(messages, **kw)

    def reset(self):
        self.resets += 1
        self.m.reset()


class CtrlCAfter(io.StringIO):
    """stdout that sends this process a SIGINT (what Ctrl-C does) at its n-th write."""

    def __init__(self, n: int):
        super().__init__()
        self.n = n

    def write(self, s: str) -> int:
        self.n -= 1
        if self.n == 0:
            os.kill(os.getpid(), signal.SIGINT)
        return super().write(s)


def _reader(lines):
    it = iter(lines)

    def read(prompt: str) -> str:
        try:
            return next(it)
        except StopIteration:
            raise EOFError from None

    return read


@pytest.fixture(scope="module")
def model(stories260k):
    with Model.load(stories260k, backend="reference", n_ctx=256) as m:
        yield m


def _say(a, msg):
    pass


def test_ctrl_c_stops_the_reply_and_keeps_the_chat(model, capsys):
    spy = Spy(model)
    out = CtrlCAfter(3)
    rc = chat_loop(spy, _args(), {**SAMPLING, "max_tokens": 200}, _say,
                   read=_reader(["Tell me a story", "And then?"]), out=out)
    assert rc == 0
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back
    first, second = spy.asked
    assert first == [{"role": "user", "content": "Tell me a story"}]
    # the second turn carries the first reply as far as it was shown, then the new question
    shown = out.getvalue().split("\n")[0]
    assert len(second) == 3 and second[1]["role"] == "assistant"
    assert second[1]["content"] == shown and 0 < len(shown)
    assert second[2] == {"role": "user", "content": "And then?"}
    assert "(reply stopped)" in capsys.readouterr().err


@pytest.mark.parametrize("leave", ["/bye", "/exit", "/quit"])
def test_commands_are_not_sent_to_the_model(model, capsys, leave):
    spy = Spy(model)
    out = io.StringIO()
    rc = chat_loop(spy, _args(system="Be brief."), SAMPLING, _say,
                   read=_reader(["", "/help", "/nonsense", "/reset", leave, "never read"]),
                   out=out)
    assert rc == 0 and spy.asked == [] and out.getvalue() == ""
    err = capsys.readouterr().err
    assert "/reset" in err and "/bye" in err and "Ctrl-C" in err  # /help
    assert "unknown command /nonsense" in err
    assert "(conversation forgotten)" in err and spy.resets == 1


def test_reset_keeps_the_system_message(model):
    spy = Spy(model)
    chat_loop(spy, _args(system="Be brief."), SAMPLING, _say,
              read=_reader(["Hi", "/reset", "Hello"]), out=io.StringIO())
    assert [len(c) for c in spy.asked] == [2, 2]
    assert spy.asked[1] == [{"role": "system", "content": "Be brief."},
                            {"role": "user", "content": "Hello"}]


def test_ctrl_d_ends_the_prompt_line(model):
    out = io.StringIO()
    assert chat_loop(Spy(model), _args(), SAMPLING, _say, read=_reader([]), out=out) == 0
    assert out.getvalue() == "\n"


def test_conversation_past_the_context(stories260k, capsys):
    """A message that no longer fits is said once, left out of the conversation, and the chat
    goes on."""
    with Model.load(stories260k, backend="reference", n_ctx=48) as m:
        spy = Spy(m)
        chat_loop(spy, _args(), {**SAMPLING, "max_tokens": 4}, _say,
                  read=_reader(["word " * 60, "Hi"]), out=io.StringIO(), flags=_flags)
    err = capsys.readouterr().err
    assert "no longer fits the context" in err and "-c" in err and "n_ctx" not in err
    assert spy.asked[-1] == [{"role": "user", "content": "Hi"}]


def test_terminal_session(stories260k):
    """The real thing in a pseudo-terminal: /help, a reply stopped by Ctrl-C with the prompt
    back, another reply, and Ctrl-D leaving on a fresh line with exit status 0."""
    pexpect = pytest.importorskip("pexpect")
    env = {**os.environ, "FASTLLM_CACHE": "/nonexistent"}
    c = pexpect.spawn(sys.executable, ["-m", "fastllm.cli", "chat", "-m", str(stories260k),
                                       "--backend", "reference", "--temp", "0", "-c", "2048"],
                      env=env, encoding="utf-8", timeout=120)
    try:
        c.expect_exact("> ")
        c.sendline("/help")
        c.expect_exact("Ctrl-C")
        c.expect_exact("> ")
        stopped = False
        for _ in range(3):  # a reply that ends by itself before the Ctrl-C arrives: try again
            c.sendline("Once upon a time")
            c.expect_exact("Once upon a time\r\n")  # the terminal's echo
            c.expect(r"\S")  # the reply has begun
            c.sendintr()
            if c.expect([r"\(reply stopped\)", r"\(Ctrl-D or /bye leaves\)"]) == 0:
                stopped = True
                break
        assert stopped
        c.expect_exact("> ")
        c.sendline("/reset")
        c.expect_exact("(conversation forgotten)")
        c.expect_exact("> ")
        c.sendeof()
        c.expect(pexpect.EOF)
        assert c.before.startswith("\r\n")  # the line after the prompt was ended
    finally:
        c.close()
    assert c.exitstatus == 0
