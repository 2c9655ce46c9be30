// Drives a Sortition gateway with the official OpenAI Node SDK, unchanged.
//
// Usage: OPENAI_NODE_SDK=<the openai package's directory> node openai_node.mjs GATEWAY_URL API_KEY CHAT_MODEL
// Exits non-zero with a message on the first failed check.
import assert from "node:assert/strict";
import { createRequire } from "node:module";
import path from "node:path";

const require = createRequire(path.join(process.env.OPENAI_NODE_SDK, "package.json"));
const { default: OpenAI } = await import(require.resolve("openai"));

const [base, apiKey, model] = process.argv.slice(2);
const client = new OpenAI({ baseURL: `${base}/v1`, apiKey, maxRetries: 0 });
const msgs = [{ role: "user", content: "Name a colour." }];

const whole = await client.chat.completions.create({ model, messages: msgs, max_tokens: 6, temperature: 0 });
const text = whole.choices[0].message.content;

// The common loop indexes choices[0] on every chunk.
let parts = "";
let finish = null;
for await (const chunk of await client.chat.completions.create({
  model, messages: msgs, max_tokens: 6, temperature: 0, stream: true,
})) {
  parts += chunk.choices[0].delta.content ?? "";
  finish = chunk.choices[0].finish_reason ?? finish;
}
assert.equal(parts, text);
assert.equal(finish, whole.choices[0].finish_reason);

// Tools: a forced call, whole and streamed.
const tools = [{
  type: "function",
  function: {
    name: "get_weather", description: "Current weather in a city",
    parameters: {
      type: "object", required: ["city"], additionalProperties: false,
      properties: { city: { type: "string", maxLength: 20 } },
    },
  },
}];
const ask = [{ role: "user", content: "What is the weather in Paris?" }];
const forced = { type: "function", function: { name: "get_weather" } };
const t = await client.chat.completions.create({
  model, messages: ask, tools, tool_choice: forced, max_tokens: 48, temperature: 0,
});
assert.equal(t.choices[0].finish_reason, "tool_calls");
const call = t.choices[0].message.tool_calls[0];
assert.equal(call.function.name, "get_weather");
assert.equal(typeof JSON.parse(call.function.arguments).city, "string");

const acc = {};
for await (const chunk of await client.chat.completions.create({
  model, messages: ask, tools, tool_choice: forced, max_tokens: 48, temperature: 0, stream: true,
})) {
  for (const d of chunk.choices[0].delta.tool_calls ?? []) {
    acc[d.index] ??= { name: "", arguments: "" };
    acc[d.index].name += d.function?.name ?? "";
    acc[d.index].arguments += d.function?.arguments ?? "";
  }
}
assert.deepEqual(acc, { 0: { name: "get_weather", arguments: call.function.arguments } });

// The call and its result go back into the conversation.
const after = await client.chat.completions.create({
  model, tools, max_tokens: 8, temperature: 0,
  messages: [...ask, t.choices[0].message, { role: "tool", tool_call_id: call.id, content: "18 C" }],
});
assert.ok(after.choices[0].message);

try {
  await client.chat.completions.create({ model, messages: ask, tools, tool_choice: "sometimes" });
  throw new Error("a bad tool_choice was accepted");
} catch (e) {
  assert.ok(e instanceof OpenAI.BadRequestError, String(e));
  assert.equal(e.param, "tool_choice");
}
console.log("openai node sdk: all checks passed");
