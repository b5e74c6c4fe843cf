// Renders a chat template with @huggingface/jinja, the independent reference Moira's Jinja
// interpreter is compared against. Usage:
//   NODE_PATH=.deps/npm/node_modules node render_chat.cjs TEMPLATE_FILE CONTEXT_JSON_FILE
// TEMPLATE_FILE holds the raw template text; CONTEXT_JSON_FILE a JSON object of variables
// (messages, bos_token, eos_token, add_generation_prompt, tools, ...). The rendered text goes to
// stdout exactly as rendered, with no newline added; an error goes to stderr with exit status 1.
"use strict";
const fs = require("fs");

const [templateFile, contextFile] = process.argv.slice(2);
if (!templateFile || !contextFile) {
  console.error("usage: node render_chat.cjs TEMPLATE_FILE CONTEXT_JSON_FILE");
  process.exit(2);
}
const { Template } = require("@huggingface/jinja");
try {
  const source = fs.readFileSync(templateFile, "utf8");
  const context = JSON.parse(fs.readFileSync(contextFile, "utf8"));
  const text = new Template(source).render(context);
  fs.writeSync(1, text);
} catch (err) {
  console.error(`render_chat: ${err && err.message ? err.message : err}`);
  process.exit(1);
}
