// The official OpenAI client against `moira serve` (tests/cli/serve.sh runs it). Every greedy
// answer must equal what `moira generate` printed for the same prompt (expected.json, written by
// the shell test), alone, streamed, and with 8 requests of different lengths at once.
//   node serve_client.mjs BASE_URL MODEL_NAME expected.json
// expected.json: {"prompts": [{"prompt": str, "max_tokens": n, "text": str, "prompt_tokens": n,
//   "completion_tokens": n}], "chats": [{"messages": [...], ...same}], "prefix": {"first":
//   {...chat}, "second": {...chat}}}
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";

const require = createRequire(process.env.NODE_PATH + "/");
const { OpenAI } = require("openai");

const [base, model, expectedPath] = process.argv.slice(2);
const expected = JSON.parse(readFileSync(expectedPath, "utf8"));
const client = new OpenAI({ baseURL: base + "/v1", apiKey: "none", maxRetries: 0 });
let failed = 0;
const check = (ok, what, detail) => {
  console.log(`${ok ? "ok" : "FAIL"}: ${what}${ok ? "" : " " + JSON.stringify(detail)}`);
  if (!ok) failed++;
};

const sameUsage = (usage, want) =>
  usage && usage.prompt_tokens === want.prompt_tokens &&
  usage.completion_tokens === want.completion_tokens &&
  usage.total_tokens === want.prompt_tokens + want.completion_tokens;

async function completion(want, stream) {
  const params = { model, prompt: want.prompt, max_tokens: want.max_tokens, temperature: 0 };
  if (!stream) {
    const r = await client.completions.create(params);
    return { text: r.choices[0].text, finish: r.choices[0].finish_reason, usage: r.usage };
  }
  const chunks = await client.completions.create({
    ...params, stream: true, stream_options: { include_usage: true } });
  let text = "", finish = null, usage = null;
  for await (const c of chunks) {
    if (c.choices.length) { text += c.choices[0].text; finish = c.choices[0].finish_reason ?? finish; }
    if (c.usage) usage = c.usage;
  }
  return { text, finish, usage };
}

async function chat(want, stream) {
  const params = { model, messages: want.messages, max_tokens: want.max_tokens, temperature: 0 };
  const start = performance.now();
  if (!stream) {
    const r = await client.chat.completions.create(params);
    return { text: r.choices[0].message.content, finish: r.choices[0].finish_reason,
             usage: r.usage, role: r.choices[0].message.role };
  }
  const chunks = await client.chat.completions.create({
    ...params, stream: true, stream_options: { include_usage: true } });
  let text = "", finish = null, usage = null, role = null, ttft = null;
  for await (const c of chunks) {
    if (c.choices.length) {
      const d = c.choices[0].delta;
      if (d.role) role = d.role;
      if (d.content) { text += d.content; ttft ??= performance.now() - start; }
      finish = c.choices[0].finish_reason ?? finish;
    }
    if (c.usage) usage = c.usage;
  }
  return { text, finish, usage, role, ttft };
}

const agrees = (got, want) => got.text === want.text && sameUsage(got.usage, want) &&
  got.finish === want.finish_reason;

const models = await client.models.list();
check(models.data.length === 1 && models.data[0].id === model, "models.list names the model",
      models.data);

// One at a time: plain and streamed, completions and chat.
for (const [i, want] of expected.prompts.slice(0, 2).entries()) {
  const got = await completion(want, i === 1);
  check(agrees(got, want), `completion ${i} (${i === 1 ? "streamed" : "whole"}) equals generate's`,
        { got, want });
}
for (const stream of [false, true]) {
  const want = expected.chats[0];
  const got = await chat(want, stream);
  check(agrees(got, want) && got.role === "assistant",
        `chat (${stream ? "streamed" : "whole"}) equals generate --messages`, { got, want });
}

// Eight at once, of different lengths, streamed and not: batching must not change a token.
const all = await Promise.all(expected.prompts.map((want, i) => completion(want, i % 2 === 1)));
all.forEach((got, i) => check(agrees(got, expected.prompts[i]),
                              `concurrent completion ${i} equals generate's`,
                              { got, want: expected.prompts[i] }));

// The prefix cache: a second conversation with the same long system prompt reuses its rows.
const first = await chat(expected.prefix.first, true);
const second = await chat(expected.prefix.second, true);
check(agrees(first, expected.prefix.first), "a long conversation equals generate's", first.usage);
check(agrees(second, expected.prefix.second), "the same system prompt again equals generate's",
      second.usage);
const cached = second.usage?.prompt_tokens_details?.cached_tokens ?? 0;
check(cached >= expected.prefix.system_tokens, "the second reuses the system prompt's cache",
      { cached, system_tokens: expected.prefix.system_tokens });
check(second.ttft < first.ttft, "and its first token comes sooner",
      { first_ms: first.ttft, second_ms: second.ttft });
console.log(`prefix cache: first token after ${first.ttft.toFixed(1)} ms, then ` +
            `${second.ttft.toFixed(1)} ms with ${cached} cached tokens`);

// Errors the client surfaces as exceptions carry OpenAI's status and shape.
try {
  await client.completions.create({ model: "no-such-model", prompt: "hi" });
  check(false, "an unknown model is refused", "no error");
} catch (e) {
  check(e.status === 400 && e.error?.param === "model", "an unknown model is a 400 naming 'model'",
        { status: e.status, error: e.error });
}
process.exit(failed ? 1 : 0);
