// The JavaScript client's view in a process of its own, for the suite (tests/clients.py):
// made with the options given as JSON in its one argument, it prints what its hooks are given
// as JSON lines ({"kind": "change" | "reset", ...}), "ready" with who it holds online once
// started ("error" when the service refused), and on each "state" line of its input, what it
// holds now. It closes its view and exits when its input ends.
import { createInterface } from 'node:readline';

import { PresenceView } from '../clients/js/presence.js';

const print = (line) => process.stdout.write(`${JSON.stringify(line)}\n`);
const options = JSON.parse(process.argv[2]);

const view = new PresenceView({
  ...options,
  onChange: (change) =>
    print({
      kind: 'change',
      identity: change.identity,
      version: change.version,
      online: change.online,
      resync: change.resync,
    }),
  onReset: (reason) => print({ kind: 'reset', reason }),
  onStatus: (status) => print({ kind: 'status', state: status.state, error: String(status.error ?? '') }),
});

try {
  await view.start();
} catch (error) {
  print({ kind: 'error', message: String(error), status: error.status ?? 0 });
  process.exit(2);
}
print({
  kind: 'ready',
  online: [...view.online()],
  versions: Object.fromEntries([...view.online()].map((name) => [name, view.version(name)])),
});

const input = createInterface({ input: process.stdin });
input.on('line', (line) => {
  if (line === 'state') {
    print({ kind: 'state', online: [...view.online()], transport: view.transport });
  }
});
input.on('close', () => {
  view.close();
  process.exit(0);
});
