// The view's own logic against a scripted service (a fetch of the test's own): the snapshot
// and its cursor, versions, resuming by Last-Event-ID, resets and resyncs, the long-poll
// fallback, the token. node --test (tests/test_client_js.py runs it); the real service, its
// faults and a browser are the pytest suite's.
import assert from 'node:assert/strict';
import test from 'node:test';

import { PresenceRefused, PresenceView } from '../presence.js';

const SID = 'IS' + '0'.repeat(32);

// A service whose replies the test writes: listings by page cursor, lookups, and streams the
// test feeds chunk by chunk. Every request is kept.
class Scripted {
  constructor() {
    this.listings = [];
    this.requests = [];
    this.streams = [];
    this.polls = [];
    this.lookups = {};
    this.reply = null; // a test's own answer to a request, before the defaults
    this.fetch = (url, init) => this.#answer(new URL(url, 'http://presence.test/'), init);
  }

  // The listing the next snapshot reads: pages of [identity, version] and their feed cursor.
  list(feedCursor, ...pages) {
    this.listings.push({ feedCursor, pages });
  }

  async #answer(url, init) {
    const request = {
      path: url.pathname.split('/').pop(),
      method: init.method,
      query: url.searchParams,
      headers: init.headers,
      body: init.body === undefined ? undefined : JSON.parse(init.body),
    };
    this.requests.push(request);
    const own = this.reply && this.reply(request);
    if (own) return own;
    if (request.path === 'online') return this.#listing(request);
    if (request.path === 'lookup') {
      const found = request.body.identities.map((name) => this.lookups[name]);
      return json({ identities: found });
    }
    if (request.headers.Accept === 'text/event-stream') return this.#stream(init.signal);
    // As fetch does, a request aborted before its reply rejects.
    return new Promise((resolve, reject) => {
      this.polls.push(resolve);
      init.signal.addEventListener('abort', () => reject(new DOMException('aborted', 'AbortError')));
    });
  }

  #listing(request) {
    const listing = this.listings[0];
    const page = Number(request.query.get('cursor') ?? 0);
    const next = page + 1 < listing.pages.length ? String(page + 1) : null;
    if (next === null && request.query.get('limit') !== '1') this.listings.shift();
    const identities = listing.pages[page].map(([identity, version]) => ({ identity, version }));
    return json({ identities, next_cursor: next, feed_cursor: listing.feedCursor });
  }

  #stream(signal) {
    let controller;
    const body = new ReadableStream({
      start(c) {
        controller = c;
      },
    });
    const stream = {
      send: (text) => controller.enqueue(new TextEncoder().encode(text)),
      end: () => controller.close(),
      closed: false,
    };
    signal.addEventListener('abort', () => {
      stream.closed = true;
    });
    this.streams.push(stream);
    return new Response(body, { headers: { 'Content-Type': 'text/event-stream' } });
  }

  async stream(count = 1) {
    await until(() => this.streams.length >= count, `stream ${count}`);
    return this.streams[count - 1];
  }
}

function json(body, status = 200) {
  return new Response(JSON.stringify(body), {
    status,
    headers: { 'Content-Type': 'application/json' },
  });
}

function change(identity, version, online, id) {
  const data = { service_sid: SID, identity, online, version, reason: 'connected' };
  return `id: ${id}\nevent: change\ndata: ${JSON.stringify(data)}\n\n`;
}

async function until(condition, what, within = 2000) {
  const deadline = Date.now() + within;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

function recorded(service, options = {}) {
  const seen = [];
  const view = new PresenceView({
    serviceSid: SID,
    fetch: service.fetch,
    onChange: (c) => seen.push(['change', c.identity, c.version, c.online, c.resync]),
    onReset: (reason) => seen.push(['reset', reason]),
    ...options,
  });
  return { view, seen };
}

test('the feed is followed from the first page’s cursor, and repeats never reach the hook', async () => {
  const service = new Scripted();
  service.list('F0', [['alice', 3], ['bob', 1]], [['carol', 2]]);
  const { view, seen } = recorded(service);
  await view.start();
  try {
    assert.deepEqual([...view.online()].sort(), ['alice', 'bob', 'carol']);
    const stream = await service.stream();
    assert.equal(service.requests.at(-1).headers['Last-Event-ID'], 'F0');
    // Made while the listing was read: in it already, and on the feed again.
    stream.send(change('alice', 3, true, 'c1') + change('carol', 1, false, 'c2'));
    stream.send(change('alice', 4, false, 'c3'));
    await until(() => seen.length === 1, 'alice offline');
    assert.deepEqual(seen, [['change', 'alice', 4, false, false]]);
    assert.deepEqual([...view.online()].sort(), ['bob', 'carol']);
    assert.equal(view.cursor, 'c3');
  } finally {
    view.close();
  }
});

test('a lost stream resumes from the last id, an id alone included', async () => {
  const service = new Scripted();
  service.list('F0', [['alice', 1]]);
  const { view, seen } = recorded(service);
  await view.start();
  try {
    const first = await service.stream();
    first.send(change('bob', 1, true, 'c1') + 'id: c2\n\n: ping\n\n');
    await until(() => view.cursor === 'c2', 'the id alone');
    first.end();
    await service.stream(2);
    assert.equal(service.requests.at(-1).headers['Last-Event-ID'], 'c2');
    assert.deepEqual(seen, [['change', 'bob', 1, true, false]]);
  } finally {
    view.close();
  }
});

test('a reset calls the reset hook once, then the change hook only for what differs', async () => {
  const service = new Scripted();
  service.list('F0', [['alice', 3], ['bob', 1]]);
  service.list('F1', [['bob', 1], ['carol', 1]]);
  const { view, seen } = recorded(service);
  await view.start();
  try {
    const first = await service.stream();
    first.send('id: now\nevent: reset\ndata: {"reason":"lost"}\n\n');
    const second = await service.stream(2);
    assert.equal(service.requests.at(-1).headers['Last-Event-ID'], 'F1');
    assert.equal(first.closed, true);
    assert.deepEqual(seen, [
      ['reset', 'lost'],
      ['change', 'carol', 1, true, true],
      ['change', 'alice', 0, false, true],
    ]);
    // The versions went with the reset: alice's version 1 is news again.
    second.send(change('alice', 1, true, 'c1'));
    await until(() => seen.length === 4, 'alice online');
    assert.deepEqual(seen[3], ['change', 'alice', 1, true, false]);
  } finally {
    view.close();
  }
});

test('a cursor the service refuses is a reset too', async () => {
  const service = new Scripted();
  service.list('F0', [['alice', 1]]);
  service.list('F1', []);
  let refused = false;
  service.reply = (request) => {
    if (request.path !== 'changes' || refused) return null;
    refused = true;
    return json({ error: 'invalid_cursor', message: 'not a cursor' }, 400);
  };
  const { view, seen } = recorded(service);
  await view.start();
  try {
    await service.stream();
    assert.deepEqual(seen, [
      ['reset', 'invalid_cursor'],
      ['change', 'alice', 0, false, true],
    ]);
  } finally {
    view.close();
  }
});

test('streams that bring nothing twice in a row give way to the long-poll', async () => {
  const service = new Scripted();
  service.list('F0', [['alice', 1]]);
  const statuses = [];
  const { view, seen } = recorded(service, {
    silenceMs: 50,
    onStatus: (status) => statuses.push(status.transport),
  });
  await view.start();
  try {
    await until(() => service.polls.length === 1, 'a poll', 5000);
    assert.equal(view.transport, 'poll');
    assert.equal(service.streams.length, 2);
    const poll = service.requests.at(-1);
    assert.deepEqual([poll.query.get('since'), poll.query.get('wait')], ['F0', '25']);
    const changes = [{ service_sid: SID, identity: 'bob', online: true, version: 1 }];
    service.polls[0](json({ changes, cursor: 'P1', reset: false }));
    await until(() => service.polls.length === 2, 'the next poll');
    assert.equal(service.requests.at(-1).query.get('since'), 'P1');
    assert.deepEqual(seen, [['change', 'bob', 1, true, false]]);
    assert.equal(statuses.at(-1), 'poll');
  } finally {
    view.close();
  }
});

test('a 401 asks for a token and tries again with it; without the hook it stops', async () => {
  const service = new Scripted();
  service.list('F0', [['alice', 1]]);
  let token = 'old';
  service.reply = (request) =>
    request.headers.Authorization === 'Bearer new' ? null : json({ error: 'unauthorized' }, 401);
  const asked = [];
  const { view } = recorded(service, {
    token: () => token,
    onUnauthorized: async (refused) => {
      asked.push(refused);
      token = 'new';
    },
  });
  await view.start();
  view.close();
  assert.deepEqual(asked, ['old']);
  assert.deepEqual([...view.online()], ['alice']);

  const { view: refused } = recorded(service, { token: 'wrong' });
  await assert.rejects(refused.start(), (error) => error instanceof PresenceRefused);
  assert.equal(refused.error.status, 401);
});

test('a filtered view reads the feed’s present, then looks its identities up', async () => {
  const service = new Scripted();
  service.list('F0', [['someone', 1]]);
  service.lookups = {
    alice: { identity: 'alice', online: true, version: 2 },
    bob: { identity: 'bob', online: false, version: 4 },
  };
  const { view, seen } = recorded(service, { identities: ['alice', 'bob', 'alice'] });
  await view.start();
  try {
    assert.deepEqual([...view.online()], ['alice']);
    assert.deepEqual([view.version('alice'), view.version('bob')], [2, 4]);
    await service.stream();
    const stream = service.requests.at(-1);
    assert.deepEqual(stream.query.getAll('identity'), ['alice', 'bob']);
    service.streams[0].send(change('bob', 4, true, 'c1') + change('bob', 5, true, 'c2'));
    await until(() => seen.length === 1, 'bob online');
    assert.deepEqual(seen, [['change', 'bob', 5, true, false]]);
  } finally {
    view.close();
  }

  const many = Array.from({ length: 300 }, (_, n) => `a-rather-long-identity-${n}`);
  for (const name of many) service.lookups[name] = { identity: name, online: false, version: 0 };
  service.list('F1', []);
  const { view: long } = recorded(service, { identities: many });
  await long.start();
  try {
    await service.stream(2);
    const stream = service.requests.at(-1);
    assert.equal(stream.method, 'POST');
    assert.deepEqual(stream.body, { identities: many });
    assert.equal(stream.query.getAll('identity').length, 0);
  } finally {
    long.close();
  }
});

test('changes() iterates what the hook gets, and ends when the view closes', async () => {
  const service = new Scripted();
  service.list('F0', []);
  const { view } = recorded(service);
  await view.start();
  const changes = view.changes();
  (await service.stream()).send(change('alice', 1, true, 'c1'));
  const { value } = await changes.next();
  assert.deepEqual([value.identity, value.online, value.cursor], ['alice', true, 'c1']);
  view.close();
  assert.deepEqual(await changes.next(), { value: undefined, done: true });
});
