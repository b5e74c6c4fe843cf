// Reference prompts for Moira's chat-template tests: renders each conversation file with a
// template through @huggingface/jinja (as transformers' apply_chat_template does: messages,
// bos_token and eos_token of tokenizer_config.json, add_generation_prompt true) and encodes the
// prompt with tokenizers.js, without framing (the template writes BOS itself).
//
//   NODE_PATH=... node chat_cases.cjs MODEL_DIR TEMPLATE_FILE CONVERSATIONS_OUT EXPECTED_OUT FILE...
//
// CONVERSATIONS_OUT gets each conversation as one compact JSON line (what `moira tokenize --jsonl`
// reads); EXPECTED_OUT one line per conversation: {"count", "ids", "prompt"}, or {"error"} when the
// template refuses the conversation (raise_exception).
"use strict";
const fs = require("fs");
const path = require("path");
const { Tokenizer } = require("@huggingface/tokenizers");
const { Template } = require("@huggingface/jinja");

const [dir, templateFile, conversationsOut, expectedOut, ...files] = process.argv.slice(2);
if (!files.length) {
  process.stderr.write("usage: node chat_cases.cjs MODEL_DIR TEMPLATE_FILE CONV_OUT EXPECTED_OUT FILE...\n");
  process.exit(2);
}
const readJSON = (name) => JSON.parse(fs.readFileSync(path.join(dir, name), "utf8"));
const config = readJSON("tokenizer_config.json");
const t = new Tokenizer(readJSON("tokenizer.json"), config);
const tokenText = (v) => (v && typeof v === "object" ? v.content : v);
const template = new Template(fs.readFileSync(templateFile, "utf8"));

const conversations = [];
const expected = [];
for (const file of files) {
  const messages = JSON.parse(fs.readFileSync(file, "utf8"));
  conversations.push(JSON.stringify(messages));
  try {
    const prompt = template.render({
      messages,
      bos_token: tokenText(config.bos_token),
      eos_token: tokenText(config.eos_token),
      add_generation_prompt: true,
    });
    const ids = prompt.length ? t.encode(prompt).ids : [];
    expected.push(JSON.stringify({ count: ids.length, ids, prompt }));
  } catch (err) {
    expected.push(JSON.stringify({ error: String(err && err.message ? err.message : err) }));
  }
}
fs.writeFileSync(conversationsOut, conversations.join("\n") + "\n");
fs.writeFileSync(expectedOut, expected.join("\n") + "\n");
