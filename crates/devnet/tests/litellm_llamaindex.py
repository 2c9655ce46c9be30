"""Drives a Sortition gateway with litellm and LlamaIndex's OpenAI-compatible LLM, unchanged.

Usage: python3 litellm_llamaindex.py GATEWAY_URL API_KEY CHAT_MODEL EMBED_MODEL
Exits non-zero with a message on the first failed check.
"""
import json
import os
import sys

# litellm reads its model price list from the network unless told to use its bundled copy.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm
from llama_index.core.llms import ChatMessage
from llama_index.llms.openai_like import OpenAILike

base, key, chat_model, embed_model = sys.argv[1:5]
api = {"api_base": base + "/v1", "api_key": key}
msgs = [{"role": "user", "content": "Name a colour."}]

r = litellm.completion(model="openai/" + chat_model, messages=msgs, max_tokens=6, temperature=0,
                       **api)
text = r.choices[0].message.content
assert text and r.usage.completion_tokens >= 1, r
parts = [c.choices[0].delta.content or "" for c in litellm.completion(
    model="openai/" + chat_model, messages=msgs, max_tokens=6, temperature=0, stream=True,
    **api)]
assert "".join(parts) == text, (parts, text)

tools = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
                   "required": ["city"], "additionalProperties": False}}}]
t = litellm.completion(model="openai/" + chat_model,
                       messages=[{"role": "user", "content": "Weather in Paris?"}], tools=tools,
                       tool_choice={"type": "function", "function": {"name": "get_weather"}},
                       max_tokens=48, temperature=0, **api)
call = t.choices[0].message.tool_calls[0]
assert call.function.name == "get_weather", t
assert isinstance(json.loads(call.function.arguments)["city"], str), call

e = litellm.embedding(model="openai/" + embed_model, input=["hello world"], **api)
assert len(e.data[0]["embedding"]) == 384, e

llm = OpenAILike(model=chat_model, api_base=base + "/v1", api_key=key, is_chat_model=True,
                 max_tokens=8, temperature=0, max_retries=0)
said = llm.chat([ChatMessage(role="user", content="Name a colour.")])
assert said.message.content, said
streamed = "".join(c.delta or "" for c in llm.stream_chat(
    [ChatMessage(role="user", content="Name a colour.")]))
assert streamed == said.message.content, (streamed, said.message.content)
done = llm.complete("The sky is")
assert isinstance(done.text, str), done

print("litellm and llamaindex: all checks passed")
