// Upstream's runtime as a test oracle. Reads JSON lines {id, module, export, doc} on stdin and
// answers JSON lines {id, success, data | issues} on stdout, using the Zod schemas compiled into
// @objectstack/spec's dist/ (the package folder is argv[2]).
'use strict';
const path = require('path');
const readline = require('readline');

const pkg = process.argv[2];
const modules = {};
function load(name) {
  if (!modules[name]) modules[name] = require(path.join(pkg, 'dist', name, 'index.js'));
  return modules[name];
}

const rl = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
rl.on('line', (line) => {
  if (!line.trim()) return;
  const { id, module, export: name, doc } = JSON.parse(line);
  let answer;
  try {
    const schema = load(module)[name];
    if (!schema || typeof schema.safeParse !== 'function') {
      answer = { id, error: `no Zod schema ${module}.${name}` };
    } else {
      const result = schema.safeParse(doc);
      answer = result.success
        ? { id, success: true, data: result.data }
        : { id, success: false, issues: result.error.issues.map((i) => ({ path: i.path.join('.'), code: i.code, message: i.message })) };
    }
  } catch (e) {
    answer = { id, error: String(e && e.stack || e) };
  }
  process.stdout.write(JSON.stringify(answer) + '\n');
});
