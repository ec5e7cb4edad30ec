"""Constrained decoding (fastllm.constrain, the engine's masks and forced chunks): outputs of
stories260K, which never writes JSON on its own, parse and validate (the jsonschema package) on
a set of schemas, greedy and sampled, on the reference and WebGPU backends; regex, Lark and GBNF
grammars; the token mask against llguidance's own NumPy reference; bad constraints as
ArgumentErrors before anything runs; a constraint that max_tokens cuts short ends with
finish_reason "incomplete"; forced tokens read as one chunk; free rows beside a constrained
one give what they give alone."""

from __future__ import annotations

import json
import re

import jsonschema
import numpy as np
import pytest

from fastllm.errors import ArgumentError
from fastllm.sampling import RowSampling, allowed_tokens, apply_token_mask, sample_row

SCHEMAS = {
    "nested": {"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 12},
        "owner": {"type": "object", "properties": {
            "id": {"type": "integer", "minimum": 0, "maximum": 999},
            "ok": {"type": "boolean"}}, "required": ["id", "ok"], "additionalProperties": False}},
        "required": ["name", "owner"], "additionalProperties": False},
    "enums_arrays": {"type": "object", "properties": {
        "color": {"enum": ["red", "green", "blue"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 6},
                 "minItems": 2, "maxItems": 3}},
        "required": ["color", "tags"], "additionalProperties": False},
    "any_of": {"type": "object", "properties": {
        "value": {"anyOf": [{"type": "integer", "minimum": 10, "maximum": 20},
                            {"type": "string", "pattern": "^[a-c]{2,4}$"}]}},
        "required": ["value"], "additionalProperties": False},
    "patterns_formats": {"type": "object", "properties": {
        "code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"},
        "day": {"type": "string", "format": "date"}},
        "required": ["code", "day"], "additionalProperties": False},
    "optional_fields": {"type": "object", "properties": {
        "a": {"type": "integer", "minimum": 1, "maximum": 9},
        "b": {"type": "string", "maxLength": 8},
        "c": {"type": "boolean"}}, "required": ["a"], "additionalProperties": False},
    "bounded_numbers": {"type": "object", "properties": {
        "t": {"type": "integer", "exclusiveMinimum": -5, "maximum": 5},
        # (multipleOf bounds the digits: without it a small model may write 1.0000... until
        # max_tokens, which JSON allows)
        "x": {"type": "number", "minimum": 0, "maximum": 1, "multipleOf": 0.01}},
        "required": ["t", "x"], "additionalProperties": False},
}


@pytest.fixture(scope="module")
def models(stories260k):
    from fastllm import Model

    made = {}

    def get(backend: str):
        if backend not in made:
            made[backend] = Model.load(stories260k, backend=backend, quiet=True)
        return made[backend]

    yield get
    for m in made.values():
        m.close()


def test_mask_is_llguidance_s():
    """apply_token_mask against llguidance.numpy.apply_token_bitmask_inplace (its reference)."""
    from llguidance.numpy import apply_token_bitmask_inplace

    rng = np.random.default_rng()
    for n in (1, 31, 32, 33, 300, 4999):
        x = rng.standard_normal(n).astype(np.float32)
        words = rng.integers(0, 1 << 32, -(-n // 32), dtype=np.uint64).astype(np.uint32)
        want = x[None].copy()
        apply_token_bitmask_inplace(want, words.view(np.int32)[None])
        np.testing.assert_array_equal(apply_token_mask(x, words), want[0])
        assert allowed_tokens(words, n).sum() == np.isfinite(want[0]).sum()
    # sample_row picks among allowed tokens only, greedy and drawn
    x = np.arange(64, dtype=np.float32)
    words = np.array([1 << 5, 1 << 1], np.uint32)  # tokens 5 and 33
    assert sample_row(x, RowSampling(temperature=0), 0.0, (), words).id == 33
    assert {sample_row(x, RowSampling(), u, (), words).id for u in np.linspace(0, 0.99, 9)} \
        <= {5, 33}


@pytest.mark.parametrize("backend", ["reference", "webgpu"])
@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_schemas_greedy_and_sampled(models, backend, name):
    """Every output parses as JSON and validates against its schema, and ends with "stop"."""
    m = models(backend)
    schema = SCHEMAS[name]
    runs = [{"temperature": 0}, {"temperature": 0.8, "seed": 7}]
    if backend == "reference":
        runs.append({"temperature": 1.2, "seed": 11, "top_k": 0})
    for kw in runs:
        g = m.generate("Once upon a time", max_tokens=160, json_schema=schema, stream=True,
                       **kw)
        text = "".join(g)
        assert g.finish_reason == "stop", (name, kw, text)
        jsonschema.validate(json.loads(text), schema, format_checker=jsonschema.FormatChecker())


def test_regex_and_grammars(models):
    m = models("reference")
    rx = r"[0-9]{3}-[a-z]{2,5}( [a-z]+){0,2}"
    for kw in ({"temperature": 0}, {"temperature": 0.9, "seed": 3}):
        out = m.generate("Once", max_tokens=40, regex=rx, **kw)
        assert re.fullmatch(rx, out), out
    lark = 'start: "The " ANIMAL " is " ("happy" | "sad") "."\nANIMAL: "cat" | "dog" | "bird"'
    out = m.generate("Once", max_tokens=40, grammar=lark, temperature=0.9, seed=1)
    assert re.fullmatch(r"The (cat|dog|bird) is (happy|sad)\.", out), out
    gbnf = 'root ::= "answer: " ("yes" | "no") "!"'
    assert m.generate("Once", max_tokens=40, grammar=gbnf, temperature=0) in (
        "answer: yes!", "answer: no!")


@pytest.mark.parametrize("kw,match", [
    ({"json_schema": {"type": "strin"}}, "(?s)json_schema cannot be used: .*strin"),
    ({"json_schema": "{not json"}, "json_schema is not valid JSON"),
    ({"json_schema": 3}, "json_schema must be a JSON schema"),
    ({"json_schema": {"type": "string", "format": "no-such-format"}}, "no-such-format"),
    ({"regex": "a[b"}, "(?s)regex cannot be used: .*unclosed"),
    ({"grammar": "start: undefined_rule"}, "(?s)grammar cannot be used: .*undefined_rule"),
    ({"grammar": "root ::= missing_rule"}, "(?s)grammar cannot be used: .*missing_rule"),
    ({"regex": "a", "grammar": 'start: "a"'}, "one constraint"),
])
def test_bad_constraints_before_anything_runs(models, kw, match):
    from fastllm import Engine

    m = models("reference")
    before = m.cached_tokens()
    with pytest.raises(ArgumentError, match=match):
        m.generate("Once upon a time", max_tokens=4, **kw)
    assert m.cached_tokens() == before  # nothing was evaluated
    with Engine(m) as eng:
        with pytest.raises(ArgumentError, match=match):
            eng.submit("Once", **kw)
        assert eng.pending == 0 and eng.running == 0


def test_incomplete_when_max_tokens_cuts_it_short(models):
    """A schema whose shortest output is longer than max_tokens ends "incomplete" (and one
    that completes in time, "stop"); usage counts the tokens."""
    from fastllm import Engine

    m = models("reference")
    schema = {"type": "object", "properties": {"story": {"type": "string", "minLength": 40}},
              "required": ["story"]}
    g = m.generate("Once", max_tokens=12, json_schema=schema, temperature=0, stream=True)
    text = "".join(g)
    assert g.finish_reason == "incomplete" and g.n_tokens == 12
    assert text.startswith('{"story": "')
    with Engine(m) as eng:
        r = eng.submit("Once", max_tokens=12, json_schema=schema, temperature=0)
        r.text()
        assert r.finish_reason == "incomplete" and r.usage.completion_tokens == 12
        r = eng.submit("Once", max_tokens=12, regex="[0-9]{1,3}", temperature=0)
        assert re.fullmatch("[0-9]{1,3}", r.text()) and r.finish_reason == "stop"


def test_forced_tokens_are_one_chunk(models, monkeypatch):
    """An output the schema fixes entirely is read in prefill chunks, never a decode step a
    token; a schema that leaves one choice takes one decode step per free token only."""
    m = models("reference")
    steps = []
    orig = m.decode_rows_sampled
    monkeypatch.setattr(m, "decode_rows_sampled",
                        lambda *a, **k: steps.append(1) or orig(*a, **k))
    fixed = {"type": "object", "properties": {"k": {"const": "the same every time"}},
             "required": ["k"], "additionalProperties": False}
    out = m.generate("Once", max_tokens=64, json_schema=fixed, temperature=0)
    assert json.loads(out) == {"k": "the same every time"} and steps == []
    choice = {"type": "object", "properties": {"ok": {"type": "boolean"}},
              "required": ["ok"], "additionalProperties": False}
    out = m.generate("Once", max_tokens=64, json_schema=choice, temperature=0)
    assert json.loads(out)["ok"] in (True, False) and 1 <= len(steps) <= 3


@pytest.mark.parametrize("backend", ["reference", "webgpu"])
def test_constrained_beside_free_rows(stories260k, backend):
    """One engine: two free requests (greedy and seeded) beside a constrained one in the same
    batch; the free ones give exactly what they give alone, the constrained one validates."""
    from fastllm import Engine, Model

    schema = SCHEMAS["enums_arrays"]
    m = Model.load(stories260k, backend=backend, n_seq=3, quiet=True)
    try:
        free = [{"max_tokens": 24, "temperature": 0},
                {"max_tokens": 24, "temperature": 0.8, "seed": 4, "top_k": 20}]
        with Engine(m) as eng:
            alone = [eng.submit("Once upon a time", **kw).text() for kw in free]
        with Engine(m) as eng:
            c = eng.submit("The cat", max_tokens=80, json_schema=schema, temperature=0.7,
                           seed=2)
            rs = [eng.submit("Once upon a time", **kw) for kw in free]
            assert [r.text() for r in rs] == alone
            jsonschema.validate(json.loads(c.text()), schema)
            assert c.finish_reason == "stop"
    finally:
        m.close()


def test_old_llguidance_is_a_clear_error(monkeypatch):
    """llguidance before 1.7 takes one end-of-sequence id; fastllm names the version it needs
    instead of failing inside LLTokenizer."""
    import importlib.metadata

    from fastllm import constrain
    from fastllm.errors import UnsupportedError

    pytest.importorskip("llguidance")
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "1.6.1")
    with pytest.raises(UnsupportedError, match=r"llguidance >= 1\.7, found 1\.6\.1"):
        constrain._llg()
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "1.10.0")
    assert constrain._llg() is not None
