// isol8: the preload of a pre-started Deno interpreter (`deno run ... --preload=THIS FILE`). Before
// any user code it waits for its job on stdin: a 4-byte big-endian length, then JSON {env, cwd}.
// It takes them and returns: Deno then loads FILE as the main module, exactly as `deno run FILE`
// would (import.meta.main, Deno.mainModule, the same permissions).
function readExactly(size) {
  const buffer = new Uint8Array(size);
  for (let got = 0; got < size; ) {
    const read = Deno.stdin.readSync(buffer.subarray(got));
    if (read === null) Deno.exit(0); // the agent let it go without a job
    got += read;
  }
  return buffer;
}

const size = new DataView(readExactly(4).buffer).getUint32(0);
const job = JSON.parse(new TextDecoder().decode(readExactly(size)));
for (const name of Object.keys(Deno.env.toObject())) Deno.env.delete(name);
for (const [name, value] of Object.entries(job.env)) Deno.env.set(name, value);
Deno.chdir(job.cwd);
