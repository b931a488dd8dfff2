// Typechecked only (tsc --strict --noEmit, tests/test_client_js.py): the uses README.md shows,
// against presence.d.ts.
import {
  Change,
  EventParser,
  Held,
  Identity,
  PresenceRefused,
  PresenceView,
  ResetReason,
  Status,
} from '../presence.js';

async function follow(): Promise<Set<string>> {
  const view = new PresenceView({
    url: 'https://presence.example.com',
    serviceSid: 'ISaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa',
    token: async () => 'token',
    identities: ['alice', 'bob'],
    transport: 'auto',
    onChange: (change: Change) => {
      const dot: boolean = change.online;
      const why: string | null = change.reason;
      console.log(change.identity, dot, why, change.resync, change.version);
    },
    onReset: async (reason: ResetReason) => console.log(reason),
    onStatus: (status: Status) => console.log(status.state, status.transport, status.listed),
    onUnauthorized: async (refused: string | null) => console.log(refused),
    silenceMs: 30000,
  });
  try {
    await view.start();
  } catch (error) {
    if (error instanceof PresenceRefused) console.log(error.status, error.code);
    throw error;
  }
  const found: Identity[] = await view.lookup(['alice']);
  const pending: boolean = found[0].pending_offline;
  console.log(pending, view.isOnline('alice'), view.version('alice'), view.cursor, view.transport);
  for await (const change of view.changes()) {
    if (change.resync) break;
  }
  view.close();
  return view.online();
}

const parser = new EventParser();
for (const event of parser.feed('id: c\nevent: change\ndata: {}\n\n')) {
  const data: string | null = event.data;
  console.log(event.event, data, event.id);
}
const held = new Held();
const taken: boolean = held.take('alice', 1, true);
const moved: Array<[string, boolean, number]> = held.replace(new Map([['bob', 2]]), ['bob']);
console.log(taken, moved, follow);
