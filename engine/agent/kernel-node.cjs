// A stateful session's Node.js interpreter: runs each execution's file as a script in one global
// scope (top-level declarations persist, as in Node's REPL) and reports displayed values as MIME
// bundles. Started by the agent (engine/agent/kernel.py) as the sandbox user, with
// --expose-internals for the REPL's own top-level-await rewrite.
//
// One cell per line (JSON {path, cwd, env}) on the control descriptor; per line on the results
// descriptor, {"result": {data, main}, "ack": true} for each displayed value (then it waits for the
// agent's `ack` line) and {"done": code} at the cell's end. A value's bundle is its `toMimeBundle()` (an object of MIME type -> string, or Buffer for
// binary types), else its util.inspect text. SIGINT (the agent's timeout) ends the cell only.
'use strict';
const fs = require('node:fs');
const util = require('node:util');
const vm = require('node:vm');
const { createRequire } = require('node:module');

let processTopLevelAwait = null;
try {
  ({ processTopLevelAwait } = require('internal/repl/await'));
} catch {
  // without it a cell cannot await at its top level; everything else works
}
const [controlFd, resultsFd] = process.env.ISOL8_KERNEL_FDS.split(',').map(Number);
delete process.env.ISOL8_KERNEL_FDS;

const BINARY = new Set(['image/png', 'image/jpeg', 'application/pdf']);
const KNOWN = new Set(['text/plain', 'text/html', 'text/markdown', 'text/latex', 'image/png', 'image/jpeg',
  'image/svg+xml', 'application/json', 'application/pdf']);

function bundleOf(value) {
  const bundle = {};
  if (value !== null && value !== undefined && typeof value.toMimeBundle === 'function') {
    let given = {};
    try {
      given = value.toMimeBundle() || {};
    } catch {
      // a failing display method leaves the text
    }
    for (const [mime, content] of Object.entries(given)) {
      if (!KNOWN.has(mime) || content === null || content === undefined) continue;
      if (Buffer.isBuffer(content) || content instanceof Uint8Array) {
        bundle[mime] = Buffer.from(content).toString(BINARY.has(mime) ? 'base64' : 'utf8');
      } else {
        bundle[mime] = typeof content === 'string' ? content : JSON.stringify(content);
      }
    }
  }
  if (!('text/plain' in bundle)) bundle['text/plain'] = util.inspect(value);
  return bundle;
}

// The control pipe is read synchronously, a line at a time: a cell's line, or the agent's `ack`
// after each result (so output printed after a result never overtakes it).
let pending = Buffer.alloc(0);
function readLineSync() {
  const chunk = Buffer.alloc(65536);
  for (;;) {
    const end = pending.indexOf(10);
    if (end >= 0) {
      const line = pending.subarray(0, end).toString('utf8');
      pending = pending.subarray(end + 1);
      return line;
    }
    let read;
    try {
      read = fs.readSync(controlFd, chunk, 0, chunk.length, null);
    } catch (error) {
      if (error.code === 'EAGAIN' || error.code === 'EINTR') continue;
      throw error;
    }
    if (read === 0) return null;
    pending = Buffer.concat([pending, chunk.subarray(0, read)]);
  }
}

function sendResult(bundle, main) {
  fs.writeSync(resultsFd, JSON.stringify({ result: { data: bundle, main }, ack: true }) + '\n');
  readLineSync();
}

globalThis.display = (...values) => {
  for (const value of values) sendResult(bundleOf(value), false);
};
globalThis.require = createRequire('/sandbox/');

// `import x from "m"` and its kin, at the start of a line, become dynamic imports a script may
// hold (a script cannot have static imports); `var` so that running the cell again is no error.
function rewriteImports(source) {
  return source.replace(
    /^[ \t]*import\s+(?:([\w$]+)\s*,\s*)?(?:(\*\s*as\s+[\w$]+)|(\{[^}]*\})|([\w$]+))?\s*(?:from\s*)?(['"][^'"\n]+['"])\s*;?/gm,
    (whole, first, star, names, only, module) => {
      const load = `await import(${module})`;
      const fields = [];
      const defaultName = first || only;
      if (defaultName) fields.push(`default: ${defaultName}`);
      if (names) fields.push(...names.slice(1, -1).split(',').map((n) => n.trim()).filter(Boolean)
        .map((n) => n.replace(/\s+as\s+/, ': ')));
      if (star) return `var ${star.replace(/\*\s*as\s+/, '')} = ${load};` + (defaultName ? ` var ${defaultName} = ${star.replace(/\*\s*as\s+/, '')}.default;` : '');
      return fields.length ? `var { ${fields.join(', ')} } = ${load};` : `${load};`;
    },
  );
}

let interrupt = null; // ends the running cell's wait when SIGINT comes while it awaits
process.on('SIGINT', () => {
  if (interrupt) interrupt();
});
for (const event of ['uncaughtException', 'unhandledRejection']) {
  process.on(event, (error) => process.stderr.write(`${util.inspect(error)}\n`));
}

async function runCell(cell) {
  if (cell.cwd) process.chdir(cell.cwd);
  Object.assign(process.env, cell.env || {});
  const options = {
    filename: cell.path,
    breakOnSigint: true,
    importModuleDynamically: vm.constants.USE_MAIN_CONTEXT_DEFAULT_LOADER,
  };
  try {
    const source = rewriteImports(fs.readFileSync(cell.path, 'utf8'));
    const awaiting = processTopLevelAwait ? processTopLevelAwait(source) : null;
    let value;
    if (awaiting === null) {
      value = vm.runInThisContext(source, options);
    } else {
      const stopped = new Promise((resolve) => {
        interrupt = () => resolve({ interrupted: true });
      });
      const outcome = await Promise.race([vm.runInThisContext(awaiting, options), stopped]);
      if (outcome && outcome.interrupted) {
        process.stderr.write('Interrupted: the cell was stopped while it awaited\n');
        return 130;
      }
      value = outcome ? outcome.value : undefined;
    }
    if (value !== undefined) {
      globalThis._ = value;
      sendResult(bundleOf(value), true);
    }
    return 0;
  } catch (error) {
    const text = error && error.stack ? error.stack : util.inspect(error);
    const own = (line) => line.includes(__filename) || /\(node:(vm|internal)/.test(line);
    process.stderr.write(`${text.split('\n').filter((line) => !own(line)).join('\n')}\n`);
    return error && error.code === 'ERR_SCRIPT_EXECUTION_INTERRUPTED' ? 130 : 1;
  } finally {
    interrupt = null;
  }
}

async function serve() {
  for (let line = readLineSync(); line !== null; line = readLineSync()) {
    const code = await runCell(JSON.parse(line));
    fs.writeSync(resultsFd, JSON.stringify({ done: code }) + '\n');
  }
  process.exit(0);
}

serve();
