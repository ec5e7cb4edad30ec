"""Chat templates: real templates render what their Jinja source says; hostile ones are refused
before anything runs."""

from __future__ import annotations

import pytest

from fastllm.chat import CHATML, ChatTemplate
from fastllm.errors import TemplateError
from fastllm.gguf import open_gguf
from fastllm.tokenizer import Tokenizer

CONVERSATION = [
    {"role": "system", "content": "You are concise."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4."},
    {"role": "user", "content": "And 3+3?"},
]


@pytest.fixture(scope="module")
def smol(smollm2):
    md = open_gguf(smollm2, check_types=False).metadata
    tok = Tokenizer.from_metadata(md, str(smollm2))
    return md, tok, ChatTemplate.from_metadata(md, tok)


def test_smollm2_two_turns_with_system(smol):
    _, _, ct = smol
    # Written out from the template's source: each message as
    # '<|im_start|>' + role + '\n' + content + '<|im_end|>' + '\n', then the generation prompt.
    expected = (
        "<|im_start|>system\nYou are concise.<|im_end|>\n"
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n4.<|im_end|>\n"
        "<|im_start|>user\nAnd 3+3?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert ct.render(CONVERSATION) == expected
    assert ct.render(CONVERSATION, add_generation_prompt=False) == expected[
        :-len("<|im_start|>assistant\n")]


def test_smollm2_default_system_prompt(smol):
    _, _, ct = smol
    # no system message: the template puts its own first
    assert ct.render([{"role": "user", "content": "Hi"}]) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
        "Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_smollm2_prompt_tokens(smol):
    _, tok, ct = smol
    ids = tok.encode(ct.render(CONVERSATION), add_bos=True, special=True)
    start, end = tok.token_id("<|im_start|>"), tok.token_id("<|im_end|>")
    assert ids.count(start) == 5 and ids.count(end) == 4
    assert ids[0] == start
    assert end in tok.eog_ids
    assert tok.decode(ids).startswith("system\nYou are concise.\nuser\n")


def test_chatml_fallback(data_dir):
    from conftest import need

    tok = Tokenizer.load(need(data_dir / "vocab" / "ggml-vocab-gpt-2.gguf", "gpt-2 vocab"))
    ct = ChatTemplate.from_metadata({}, tok)
    assert ct.is_chatml_fallback and ct.source == CHATML
    assert ct.render(CONVERSATION[:2]) == (
        "<|im_start|>system\nYou are concise.<|im_end|>\n"
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n")


def test_phi3_bos(data_dir):
    """Phi-3's template writes {{ bos_token }}; the vocabulary adds BOS itself, so the rendered
    text drops it (as llama.cpp does) and encoding gives a single BOS."""
    from conftest import need

    p = need(data_dir / "vocab" / "ggml-vocab-phi-3.gguf", "phi-3 vocab")
    md = open_gguf(p, check_types=False).metadata
    tok = Tokenizer.from_metadata(md, str(p))
    ct = ChatTemplate.from_metadata(md, tok)
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    # from the source: '<|user|>' + '\n' + content + '<|end|>' + '\n' + '<|assistant|>' + '\n',
    # then for the assistant content + '<|end|>' + '\n'
    body = "<|user|>\nHi<|end|>\n<|assistant|>\nHello<|end|>\n"
    assert ct.render(msgs) == body
    ids = tok.encode(ct.render(msgs), add_bos=True, special=True)
    assert ids.count(tok.bos_id) == 1 and ids[0] == tok.bos_id
    raw = ChatTemplate(md["tokenizer.chat_template"], bos_token="<s>")
    assert raw.render(msgs) == "<s>" + body


def test_helpers_and_jinja_features():
    src = (
        "{% set ns = namespace(n=0) %}"
        "{% for m in messages %}{% if m.role == 'system' %}{% continue %}{% endif %}"
        "{% set ns.n = ns.n + 1 %}{{ m.content | trim }}|{% endfor %}"
        "{{ ns.n }}|{{ tools | tojson }}|{{ strftime_now('%Y') | length }}|"
        "{% generation %}{{ eos_token }}{% endgeneration %}|{{ messages[0]['content'][:3] }}"
    )
    ct = ChatTemplate(src, eos_token="</s>")
    out = ct.render(CONVERSATION, tools=[{"name": "caf\u00e9", "x": [1, 2]}])
    assert out == ('What is 2+2?|4.|And 3+3?|3|[{"name": "caf\u00e9", "x": [1, 2]}]|4|</s>|You')


def test_raise_exception_and_render_errors():
    ct = ChatTemplate("{% if messages[0].role != 'user' %}{{ raise_exception('user first') }}"
                      "{% endif %}ok")
    assert ct.render([{"role": "user", "content": ""}]) == "ok"
    with pytest.raises(TemplateError, match="user first"):
        ct.render(CONVERSATION)
    with pytest.raises(TemplateError, match="ZeroDivisionError"):
        ChatTemplate("{{ 1 // 0 }}").render([])
    with pytest.raises(TemplateError):
        ChatTemplate("{{ messages[9]['content'] }}").render([])
    with pytest.raises(TemplateError, match="syntax"):
        ChatTemplate("{% for m in messages %}")
    with pytest.raises(TemplateError):
        ChatTemplate("x").render("not a list")  # type: ignore[arg-type]


HOSTILE = [
    "{{ cycler.__init__.__globals__.os.system('touch MARKER') }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ raise_exception.__globals__['__builtins__']['open']('MARKER', 'w') }}",
    "{{ self.__dict__ }}",
    "{{ lipsum['__globals__']['os'].system('touch MARKER') }}",
    "{{ namespace|attr('__init__') }}",
    "{% include 'MARKER' %}",
    "{% import 'os' as os %}{{ os.system('touch MARKER') }}",
    "{% from 'os' import system %}{{ system('touch MARKER') }}",
    "{% extends 'MARKER' %}",
]


@pytest.mark.parametrize("src", HOSTILE)
def test_hostile_templates_refused_before_running(src, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "marker"
    ran = []
    # a call at the start of the template shows whether any of it ran
    with pytest.raises(TemplateError, match="not allowed"):
        ChatTemplate("{{ probe() }}" + src.replace("MARKER", str(marker))).render(
            CONVERSATION, probe=lambda: ran.append(1) or "")
    assert ran == []
    assert not marker.exists()


@pytest.mark.parametrize("src", [
    "{{ messages | attr('_' ~ '_class__') }}",  # attribute name built at run time
    "{% set a = '__cla' %}{{ messages[0]|attr(a ~ 'ss__') }}",
    "{{ messages.append(1) }}",  # the immutable sandbox: no mutation of the caller's data
    "{{ messages[0].update({'role': 'x'}) }}",
    "{{ 'x' * 1000000000 }}",
    "{{ 9 ** 99999999 }}",
])
def test_hostile_at_run_time(src):
    msgs = [dict(m) for m in CONVERSATION]
    with pytest.raises(TemplateError):
        ChatTemplate(src).render(msgs)
    assert msgs == CONVERSATION
