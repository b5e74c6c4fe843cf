// Compares two files of JSON values, one per line, value by value (so formatting differences such
// as spacing or escapes do not matter). Used by tests/cli/tokenizer_hf.sh to hold Moira's output
// against the Hugging Face references.
//
//   node compare_jsonl.cjs EXPECTED ACTUAL [--prepend ID]
//
// --prepend ID puts ID in front of every expected array (Moira frames ids with BOS per
// add_bos_token; tokenizers.js does not for this tokenizer). Prints the first mismatches and
// exits 1 when any line differs or the line counts differ.
"use strict";
const fs = require("fs");
const util = require("util");

const [expectedFile, actualFile, flag, flagValue] = process.argv.slice(2);
if (!expectedFile || !actualFile || (flag && flag !== "--prepend")) {
  process.stderr.write("usage: node compare_jsonl.cjs EXPECTED ACTUAL [--prepend ID]\n");
  process.exit(2);
}
const read = (file) => {
  const lines = fs.readFileSync(file, "utf8").split("\n");
  if (lines[lines.length - 1] === "") lines.pop();
  return lines.map((line) => JSON.parse(line));
};
const expected = read(expectedFile);
const actual = read(actualFile);
if (flag) expected.forEach((ids) => ids.unshift(Number(flagValue)));

let mismatches = 0;
for (let i = 0; i < Math.max(expected.length, actual.length); i++) {
  if (util.isDeepStrictEqual(expected[i], actual[i])) continue;
  if (++mismatches <= 5) {
    const show = (v) => JSON.stringify(v) === undefined ? "(missing)" : JSON.stringify(v).slice(0, 300);
    process.stdout.write(`line ${i + 1} differs:\n  expected ${show(expected[i])}\n  actual   ${show(actual[i])}\n`);
  }
}
process.stdout.write(`${expected.length} expected, ${actual.length} actual, ${mismatches} differ\n`);
process.exit(mismatches || expected.length !== actual.length ? 1 : 0);
