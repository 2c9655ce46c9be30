"""Drives a Sortition gateway with the official OpenAI Python SDK, unchanged.

Usage: python3 openai_sdk.py GATEWAY_URL API_KEY CHAT_MODEL EMBED_MODEL
Exits non-zero with a message on the first failed check.
"""
import json
import sys

import openai
import pydantic

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

assert client.models.retrieve(chat_model).id == chat_model

# Issue 21: several prompts and n > 1 (one receipted request per answer at the gateway).
many = client.completions.create(model=chat_model, prompt=["The sky is", "Grass is"], n=2,
                                 max_tokens=3, temperature=1)
assert [c.index for c in many.choices] == [0, 1, 2, 3], many
assert len(many.model_extra["sortition"]["choices"]) == 4, many
drawn = client.chat.completions.create(model=chat_model, messages=msgs, n=2, max_tokens=4,
                                       temperature=1)
assert len(drawn.choices) == 2, drawn

# Issue 21: log-probabilities in OpenAI's shape.
lp = client.chat.completions.create(model=chat_model, messages=msgs, max_tokens=4, temperature=0,
                                    logprobs=True, top_logprobs=2)
entries = lp.choices[0].logprobs.content
assert entries and all(len(e.top_logprobs) == 2 for e in entries), lp
assert all(e.top_logprobs[0].token == e.token for e in entries), "greedy token ranks first"

# Issue 21: structured outputs. `parse` with a pydantic model gets a parsed object.
class City(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=16)
    country: str = pydantic.Field(max_length=16)

p = client.chat.completions.parse(
    model=chat_model, messages=[{"role": "user", "content": "Name a city in France."}],
    response_format=City, max_tokens=64, temperature=0)
assert isinstance(p.choices[0].message.parsed, City), p
j = client.chat.completions.create(
    model=chat_model, messages=[{"role": "user", "content": "Describe Paris as JSON."}],
    response_format={"type": "json_object"}, max_tokens=48, temperature=0)
if j.choices[0].finish_reason == "stop":
    assert isinstance(json.loads(j.choices[0].message.content), dict), j

# Issue 21: tool calling. A forced call (named, then `required` through pydantic's strict
# tool) has arguments valid under the function's schema; the call and its result go back in
# the history; the same call streams in OpenAI's delta shape.
tools = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 20},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"], "additionalProperties": False}}}]
ask = [{"role": "user", "content": "What is the weather in Paris?"}]
named = {"type": "function", "function": {"name": "get_weather"}}
t = client.chat.completions.create(model=chat_model, messages=ask, tools=tools, tool_choice=named,
                                   max_tokens=64, temperature=0)
choice = t.choices[0]
assert choice.finish_reason == "tool_calls", t
call = choice.message.tool_calls[0]
args = json.loads(call.function.arguments)
assert call.function.name == "get_weather" and args["unit"] in ("celsius", "fahrenheit"), call
assert isinstance(args["city"], str) and call.id.startswith("call_"), call

acc, finish = {}, None
for chunk in client.chat.completions.create(model=chat_model, messages=ask, tools=tools,
                                            tool_choice=named, max_tokens=64, temperature=0,
                                            stream=True):
    for d in chunk.choices[0].delta.tool_calls or []:
        a = acc.setdefault(d.index, {"name": "", "arguments": ""})
        a["name"] += d.function.name or ""
        a["arguments"] += d.function.arguments or ""
    finish = chunk.choices[0].finish_reason or finish
assert acc == {0: {"name": "get_weather", "arguments": call.function.arguments}}, acc
assert finish == "tool_calls", finish

history = ask + [{"role": "assistant", "content": None,
                  "tool_calls": [call.model_dump()]},
                 {"role": "tool", "tool_call_id": call.id, "content": "18 C and sunny"}]
after = client.chat.completions.create(model=chat_model, messages=history, tools=tools,
                                       max_tokens=16, temperature=0)
assert after.choices[0].finish_reason in ("stop", "length", "tool_calls"), after

# `auto`: the model decides; whatever it answers is well formed (text, or calls to listed
# functions with JSON arguments).
auto = client.chat.completions.create(model=chat_model, messages=ask, tools=tools,
                                      tool_choice="auto", max_tokens=48, temperature=0)
m = auto.choices[0].message
if auto.choices[0].finish_reason == "tool_calls":
    assert all(c.function.name == "get_weather" for c in m.tool_calls), m
    assert all(isinstance(json.loads(c.function.arguments), dict) for c in m.tool_calls), m
else:
    assert isinstance(m.content, str) and not m.tool_calls, m

class GetWeather(pydantic.BaseModel):
    city: str = pydantic.Field(max_length=20)

forced = client.chat.completions.parse(
    model=chat_model, messages=ask, tools=[openai.pydantic_function_tool(GetWeather)],
    tool_choice="required", max_tokens=64, temperature=0)
parsed = forced.choices[0].message.tool_calls[0].function.parsed_arguments
assert isinstance(parsed, GetWeather), forced

try:
    client.chat.completions.create(model=chat_model, messages=ask, tools=tools,
                                   tool_choice={"type": "function", "function": {"name": "nope"}})
    raise SystemExit("a tool_choice naming no tool was accepted")
except openai.BadRequestError as err:
    assert err.body["param"] == "tool_choice", err.body

bad = openai.OpenAI(base_url=base + "/v1", api_key="sk-sort-wrong", max_retries=0)
try:
    bad.models.list() if False else bad.chat.completions.create(model=chat_model, messages=msgs)
    raise SystemExit("a wrong key was accepted")
except openai.AuthenticationError as err:
    assert err.status_code == 401

print("openai sdk: all checks passed")
