"""Drives a Sortition gateway with LangChain's `ChatOpenAI` and `OpenAIEmbeddings`, unchanged.

Usage: python3 langchain_compat.py GATEWAY_URL API_KEY CHAT_MODEL EMBED_MODEL
Exits non-zero with a message on the first failed check.
"""
import sys

import pydantic
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_openai import ChatOpenAI, OpenAIEmbeddings

base, key, chat_model, embed_model = sys.argv[1:5]
llm = ChatOpenAI(base_url=base + "/v1", api_key=key, model=chat_model, temperature=0,
                 max_tokens=64, max_retries=0)

reply = llm.invoke("Name a colour.")
assert isinstance(reply.content, str) and reply.content, reply
streamed = "".join(c.content for c in llm.stream("Name a colour."))
assert streamed == reply.content, (streamed, reply.content)


class GetWeather(pydantic.BaseModel):
    """Current weather in a city."""
    city: str = pydantic.Field(max_length=20, description="the city")


# bind_tools with a forced tool: the call comes back parsed, with its id.
with_tools = llm.bind_tools([GetWeather], tool_choice="GetWeather")
ask = HumanMessage("What is the weather in Paris?")
msg = with_tools.invoke([ask])
assert len(msg.tool_calls) == 1, msg
call = msg.tool_calls[0]
assert call["name"] == "GetWeather" and isinstance(call["args"]["city"], str), call
# The call and its result go back into the conversation.
after = with_tools.bind(tool_choice="auto").invoke(
    [ask, msg, ToolMessage("18 C and sunny", tool_call_id=call["id"])])
assert after.response_metadata["finish_reason"] in ("stop", "length", "tool_calls"), after
# Streamed tool calls add up to the same call.
chunks = None
for c in with_tools.stream([ask]):
    chunks = c if chunks is None else chunks + c
assert chunks.tool_calls and chunks.tool_calls[0]["args"] == call["args"], (chunks, call)


class City(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=16)
    country: str = pydantic.Field(max_length=16)


for method in ("function_calling", "json_schema"):
    city = llm.with_structured_output(City, method=method).invoke("Name a city in France.")
    assert isinstance(city, City), (method, city)

# json_mode constrains to a JSON object (not to the schema): the document always parses.
out = llm.with_structured_output(
    {"title": "city", "type": "object", "properties": {"name": {"type": "string"}}},
    method="json_mode", include_raw=True).invoke('Reply in JSON: {"name": <a city in France>}')
assert out["raw"].response_metadata["finish_reason"] == "stop", out
assert isinstance(out["parsed"], dict) and out["parsing_error"] is None, out

# Embeddings with text input (the default path tokenizes with OpenAI's tiktoken vocabulary,
# which is not this model's: check_embedding_ctx_length=False sends the text).
emb = OpenAIEmbeddings(base_url=base + "/v1", api_key=key, model=embed_model,
                       check_embedding_ctx_length=False, max_retries=0)
vectors = emb.embed_documents(["hello world", "goodbye"])
assert len(vectors) == 2 and len(vectors[0]) == 384, len(vectors)

print("langchain: all checks passed")
