"""Drives a Sortition gateway with the official OpenAI Python SDK, unchanged.

Usage: python3 openai_sdk.py GATEWAY_URL API_KEY CHAT_MODEL EMBED_MODEL
Exits non-zero with a message on the first failed check.
"""
import sys

import openai

base, key, chat_model, embed_model = sys.argv[1:5]
client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)

models = [m.id for m in client.models.list()]
assert chat_model in models and embed_model in models, models

msgs = [{"role": "user", "content": "Name a colour."}]
r = client.chat.completions.create(model=chat_model, messages=msgs, max_tokens=6, temperature=0)
text = r.choices[0].message.content
assert r.choices[0].finish_reason in ("stop", "length"), r
assert r.usage.completion_tokens >= 1 and r.usage.prompt_tokens > 0, r.usage

parts, usage = [], None
stream = client.chat.completions.create(
    model=chat_model, messages=msgs, max_tokens=6, temperature=0, stream=True,
    stream_options={"include_usage": True})
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        parts.append(chunk.choices[0].delta.content)
    if chunk.usage:
        usage = chunk.usage
assert "".join(parts) == text, ("stream differs from non-stream", parts, text)
assert usage is not None and usage.completion_tokens == r.usage.completion_tokens, usage

# Issue 21: the common loop indexes choices[0] on every chunk. Without include_usage no chunk
# may have empty choices (the receipt rides on the finish chunk, the last one).
parts, finish, receipt = [], None, None
for chunk in client.chat.completions.create(
        model=chat_model, messages=msgs, max_tokens=6, temperature=0, stream=True):
    delta = chunk.choices[0].delta
    parts.append(delta.content or "")
    finish = chunk.choices[0].finish_reason or finish
    extra = chunk.model_extra or {}
    if extra.get("sortition"):
        receipt = extra["sortition"]["receipt"]
assert "".join(parts) == text, ("stream differs from non-stream", parts, text)
assert finish == r.choices[0].finish_reason, finish
assert receipt is not None, "no chunk carried the receipt"
for chunk in client.completions.create(
        model=chat_model, prompt="The sky is", max_tokens=4, temperature=0, stream=True):
    assert chunk.choices[0].text is not None, chunk

# Issue 21: no seed, temperature 1: independent draws with their own ids; a seed repeats.
ids = {client.chat.completions.create(model=chat_model, messages=msgs, max_tokens=4,
                                      temperature=1).id for _ in range(3)}
assert len(ids) == 3, ids
seeded = [client.chat.completions.create(model=chat_model, messages=msgs, max_tokens=8,
                                         temperature=1, seed=7).choices[0].message.content
          for _ in range(2)]
assert seeded[0] == seeded[1], seeded

c = client.completions.create(model=chat_model, prompt="The sky is", max_tokens=4, temperature=0)
assert c.choices[0].text is not None and c.usage.completion_tokens >= 1, c

e = client.embeddings.create(model=embed_model, input=["hello world", "goodbye"])
assert len(e.data) == 2 and len(e.data[0].embedding) == 384, e
norm = sum(x * x for x in e.data[0].embedding) ** 0.5
assert abs(norm - 1.0) < 1e-3, norm

try:
    client.chat.completions.create(model="no-such-model", messages=msgs)
    raise SystemExit("unknown model was accepted")
except openai.NotFoundError as err:
    assert err.body["code"] == "model_not_found", err.body

bad = openai.OpenAI(base_url=base + "/v1", api_key="sk-sort-wrong", max_retries=0)
try:
    bad.models.list() if False else bad.chat.completions.create(model=chat_model, messages=msgs)
    raise SystemExit("a wrong key was accepted")
except openai.AuthenticationError as err:
    assert err.status_code == 401

print("openai sdk: all checks passed")
