// One JavaScript client of a change feed in Node, for row "client" (bench/client.py runs it
// against its stand-in, with --expose-gc): `speed` takes the stream's changes and says how
// fast; `memory` reads the listing and says what holding it costs. Prints one JSON line.
//   node --expose-gc bench/client_follow.mjs URL SERVICE_SID speed|memory CHANGES
import { PresenceView } from '../clients/js/presence.js';

const [url, serviceSid, mode, count] = process.argv.slice(2);

async function speed() {
  let seen = 0;
  let first = 0;
  let last = 0;
  let taken;
  const done = new Promise((resolve) => {
    taken = resolve;
  });
  const cpu = process.cpuUsage();
  const view = new PresenceView({
    url,
    serviceSid,
    transport: 'stream',
    onChange: () => {
      seen += 1;
      if (seen === 1) first = performance.now();
      if (seen === Number(count)) {
        last = performance.now();
        taken();
      }
    },
  });
  await view.start();
  await done;
  view.close();
  const used = process.cpuUsage(cpu);
  return { changes: seen, seconds: (last - first) / 1000, cpu_seconds: (used.user + used.system) / 1e6 };
}

async function memory() {
  globalThis.gc();
  const before = process.memoryUsage();
  const view = new PresenceView({ url, serviceSid, transport: 'stream' });
  await view.start();
  globalThis.gc();
  const after = process.memoryUsage();
  const held = view.online().size;
  view.close();
  return { held, rss_delta: after.rss - before.rss, heap_delta: after.heapUsed - before.heapUsed };
}

console.log(JSON.stringify(mode === 'memory' ? await memory() : await speed()));
process.exit(0);
