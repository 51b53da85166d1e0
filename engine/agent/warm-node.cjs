// isol8: the preload of a pre-started Node interpreter (`node --require THIS FILE`). Before any
// user code it waits for its job on stdin: a 4-byte big-endian length, then JSON {env, cwd}.
// It takes them, removes itself from the module cache, and returns: Node then loads FILE as the
// main module, exactly as `node FILE` would (ESM or CommonJS, require.main, import.meta.url).
'use strict';
const fs = require('fs');

function readExactly(size) {
  const buffer = Buffer.alloc(size);
  for (let got = 0; got < size; ) {
    const read = fs.readSync(0, buffer, got, size - got, null);
    if (read === 0) process.exit(0);  // the agent let it go without a job
    got += read;
  }
  return buffer;
}

// The output streams are made now (over the same pipes the job writes to): ~4 ms of the job's
// first write. stdin is left alone: it is read below, and stays the job's.
void process.stdout;
void process.stderr;
const job = JSON.parse(readExactly(readExactly(4).readUInt32BE(0)).toString('utf8'));
for (const name of Object.keys(process.env)) delete process.env[name];
Object.assign(process.env, job.env);
process.chdir(job.cwd);
delete require.cache[__filename];
