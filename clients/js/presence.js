// presence-client: who is online in a Twilio Sync service, as a presence service publishes
// it, kept exactly in step. Plain ES module, no dependencies, no build step: current browsers
// and Node 18+. Types: presence.d.ts. The dashboard of the service serves a copy of this very
// file (presence/web/dashboard/presence.js, kept identical by the service's tests).
//
// How the view stays exact (docs/changes.md in the service's repository, "Following changes"):
//   1. The snapshot: every page of GET /online?versions=true, keeping the first page's
//      feed_cursor (a filtered view: that cursor, then POST /lookup of its identities).
//   2. The change feed from that cursor, as Server-Sent Events read through fetch (so the
//      token goes in an Authorization header, which an EventSource cannot send), or as JSON
//      long-polls where a proxy holds streams back. A change is taken only when its version is
//      above the one held: the listing already shows what changed while it was read.
//   3. A lost connection resumes from the last cursor (Last-Event-ID), with backoff.
//   4. A reset (the cursor cannot be resumed): the reset hook, a new snapshot replacing all
//      that is held (the versions too), and the change hook for each identity whose state the
//      new snapshot changes, marked as a resync.

const EVENT_STREAM = 'text/event-stream';
const PAGE_SIZE = 1000; // the largest page of /online and of the feed; the most names a lookup takes
const QUERY_FILTER_MAX = 1500; // a filter longer than this in a URL is POSTed
const REQUEST_MS = 30000;
const SILENCE_MS = 30000; // the service writes to a stream at least every 10 s
const POLL_WAIT_SECONDS = 25;
const STALLS_BEFORE_POLLING = 2;
const FIRST_BACKOFF_MS = 100;
const MAX_BACKOFF_MS = 5000;
const LINE_END = /\r\n|\r|\n/;

// ---------------------------------------------------------------------------------------------
// Errors

/** A request to the service failed. */
export class PresenceError extends Error {
  constructor(message, { status = 0, code = '' } = {}) {
    super(message);
    this.name = 'PresenceError';
    this.status = status;
    this.code = code;
  }
}

/** The service refused (a wrong token, ServiceSid or filter): asking again cannot help. */
export class PresenceRefused extends PresenceError {
  constructor(status, code, message) {
    super(message ? `${status} ${code}: ${message}` : `${status} ${code}`, { status, code });
    this.name = 'PresenceRefused';
  }
}

/** The service could not be reached, or cannot serve now: the view tries again. */
export class PresenceUnavailable extends PresenceError {
  constructor(message, { status = 0, code = '', retryAfterMs = null, stalled = false } = {}) {
    super(message, { status, code });
    this.name = 'PresenceUnavailable';
    this.retryAfterMs = retryAfterMs;
    this.stalled = stalled;
  }
}

class InvalidCursor extends Error {}

class Reset extends Error {
  constructor(reason) {
    super(reason);
    this.reason = reason;
  }
}

// ---------------------------------------------------------------------------------------------
// The Server-Sent Events wire format (the HTML standard's: lines end with CR LF, LF or CR; a
// blank line ends an event; a line starting with a colon is a comment).

/** Turns text, in chunks cut anywhere, into events ({event, data, id}; data null for an event
 * with an id alone, which moves the cursor). */
export class EventParser {
  #buffer = '';
  #started = false;
  #event = '';
  #data = [];
  #id = null;

  feed(text) {
    if (!this.#started && text) {
      this.#started = true;
      if (text.startsWith('\ufeff')) text = text.slice(1);
    }
    const buffer = this.#buffer + text;
    // A CR at the very end may be the first half of a CR LF: kept until what follows.
    const end = buffer.endsWith('\r') ? buffer.length - 1 : buffer.length;
    const lines = buffer.slice(0, end).split(LINE_END);
    this.#buffer = lines.pop() + buffer.slice(end);
    const events = [];
    for (const line of lines) {
      if (line) {
        this.#field(line);
      } else if (this.#data.length > 0 || this.#id !== null) {
        const data = this.#data.length > 0 ? this.#data.join('\n') : null;
        events.push({ event: this.#event || 'message', data, id: this.#id });
        this.#event = '';
        this.#data = [];
        this.#id = null;
      } else {
        this.#event = '';
      }
    }
    return events;
  }

  #field(line) {
    if (line.startsWith(':')) return;
    const colon = line.indexOf(':');
    const name = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (name === 'data') this.#data.push(value);
    else if (name === 'event') this.#event = value;
    else if (name === 'id' && !value.includes('\0')) this.#id = value;
  }
}

// ---------------------------------------------------------------------------------------------
// What a view holds

/** Identities, the version of the change behind each one's state, and who is online. */
export class Held {
  constructor() {
    this.versions = new Map();
    this.online = new Set();
  }

  /** Takes a change when it is newer than what is held; false for a repeat. */
  take(identity, version, online) {
    if (version <= (this.versions.get(identity) ?? 0)) return false;
    this.versions.set(identity, version);
    if (online) this.online.add(identity);
    else this.online.delete(identity);
    return true;
  }

  /** Holds a new snapshot instead, forgetting all held before (the versions too: after
   * Redis lost data a version may be used again); returns each identity whose state it
   * changes, as [identity, online now, version now]. */
  replace(versions, online) {
    const now = new Set(online);
    const moved = [];
    for (const name of [...now].sort()) {
      if (!this.online.has(name)) moved.push([name, true, versions.get(name) ?? 0]);
    }
    for (const name of [...this.online].sort()) {
      if (!now.has(name)) moved.push([name, false, versions.get(name) ?? 0]);
    }
    this.versions = new Map(versions);
    this.online = now;
    return moved;
  }
}

// ---------------------------------------------------------------------------------------------
// The view

const CLOSED = Symbol('closed');

export class PresenceView {
  #base;
  #sid;
  #token;
  #identities;
  #onChange;
  #onReset;
  #onStatus;
  #onUnauthorized;
  #fetch;
  #silenceMs;
  #fallBack;
  #transport;
  #held = new Held();
  #cursor = null;
  #resync = false;
  #stalls = 0;
  #backoff = FIRST_BACKOFF_MS;
  #state = '';
  #closed = false;
  #closing = new AbortController();
  #queues = new Set();
  #following = null;

  /**
   * @param {object} options see presence.d.ts (PresenceViewOptions)
   */
  constructor({
    url = '',
    serviceSid,
    token = null,
    identities = null,
    transport = 'auto',
    onChange = null,
    onReset = null,
    onStatus = null,
    onUnauthorized = null,
    fetch: fetchFunction = null,
    silenceMs = SILENCE_MS,
  }) {
    if (!serviceSid) throw new TypeError('serviceSid is required');
    const names = identities === null ? null : [...new Set(identities)];
    if (names !== null && (names.length < 1 || names.length > PAGE_SIZE)) {
      throw new RangeError(`a view follows 1 to ${PAGE_SIZE} identities, or all`);
    }
    // '' (or a relative URL): requests relative to the page, so a proxy's path prefix stays.
    this.#base = url === '' || url.endsWith('/') ? url : `${url}/`;
    this.#sid = serviceSid;
    this.#token = token;
    this.#identities = names;
    this.#onChange = onChange;
    this.#onReset = onReset;
    this.#onStatus = onStatus;
    this.#onUnauthorized = onUnauthorized;
    this.#fetch = fetchFunction ?? ((...args) => globalThis.fetch(...args));
    this.#silenceMs = silenceMs;
    this.#transport = transport === 'poll' ? 'poll' : 'stream';
    this.#fallBack = transport === 'auto';
    /** Why the view stopped following, when the service refused it. */
    this.error = null;
  }

  // -- what it holds ----------------------------------------------------------------------------

  get serviceSid() {
    return this.#sid;
  }

  /** Whether the identity is published online (pending offline included). */
  isOnline(identity) {
    return this.#held.online.has(identity);
  }

  /** Every identity published online (a copy). */
  online() {
    return new Set(this.#held.online);
  }

  /** The version of the last change held for the identity (0: none). */
  version(identity) {
    return this.#held.versions.get(identity) ?? 0;
  }

  /** Where the feed resumes (null while a snapshot is read). */
  get cursor() {
    return this.#cursor;
  }

  /** How the feed is read now: 'stream' or 'poll'. */
  get transport() {
    return this.#transport;
  }

  /** Every change from now on, as onChange gets them; ends when the view closes. */
  changes() {
    const queue = { items: [], wake: null };
    if (this.#closed) queue.items.push(CLOSED);
    this.#queues.add(queue);
    const view = this;
    return {
      [Symbol.asyncIterator]() {
        return this;
      },
      async next() {
        while (queue.items.length === 0) {
          await new Promise((resolve) => {
            queue.wake = resolve;
          });
        }
        const item = queue.items[0];
        if (item === CLOSED) {
          if (view.error) throw view.error;
          return { value: undefined, done: true };
        }
        queue.items.shift();
        return { value: item, done: false };
      },
      async return() {
        view.#queues.delete(queue);
        return { value: undefined, done: true };
      },
    };
  }

  /** POST /lookup of these identities, in order, 1000 a request: with pending_offline and
   * endpoints, which the feed does not carry. */
  async lookup(identities) {
    const names = [...identities];
    const found = [];
    for (let start = 0; start < names.length; start += PAGE_SIZE) {
      const body = { identities: names.slice(start, start + PAGE_SIZE) };
      const reply = await this.#json('lookup', { method: 'POST', body });
      found.push(...reply.identities);
    }
    return found;
  }

  // -- running ----------------------------------------------------------------------------------

  /** Reads the snapshot (again while the service cannot answer), then follows the feed.
   * Rejects with a PresenceRefused when the service refuses, or when closed meanwhile. */
  async start() {
    for (;;) {
      try {
        await this.#snapshot();
        break;
      } catch (error) {
        if (error instanceof PresenceRefused || this.#closed) {
          if (!this.#closed) this.#stop(error);
          throw this.error ?? new PresenceError('closed');
        }
        await this.#retry(error);
        if (this.#closed) throw new PresenceError('closed');
      }
    }
    this.#following = this.#follow();
  }

  /** Stops following; the iterators of changes() end. */
  close() {
    if (this.#closed) return;
    this.#stop(null);
  }

  #stop(error) {
    this.error = error;
    this.#closed = true;
    this.#closing.abort();
    for (const queue of this.#queues) this.#put(queue, CLOSED);
    this.#status('closed', error ? { error } : {});
  }

  #put(queue, item) {
    queue.items.push(item);
    if (queue.wake) {
      queue.wake();
      queue.wake = null;
    }
  }

  #status(state, more = {}) {
    if (state === this.#state && state !== 'loading') return;
    this.#state = state;
    if (this.#onStatus) {
      try {
        this.#onStatus({ state, transport: this.#transport, ...more });
      } catch (error) {
        console.error('a presence view hook threw', error);
      }
    }
  }

  // -- following --------------------------------------------------------------------------------

  async #follow() {
    while (!this.#closed) {
      try {
        if (this.#cursor === null) await this.#snapshot();
        else if (this.#transport === 'poll') await this.#poll();
        else await this.#stream();
      } catch (error) {
        if (this.#closed) return;
        if (error instanceof Reset) {
          await this.#reset(error.reason);
        } else if (error instanceof InvalidCursor) {
          await this.#reset('invalid_cursor');
        } else if (error instanceof PresenceRefused) {
          this.#stop(error);
          return;
        } else {
          // Unavailable, or a reply not as the API writes it (a proxy's, say): again.
          this.#status('lost', { error });
          await this.#retry(error);
        }
      }
    }
  }

  async #stream() {
    try {
      await this.#readStream();
    } catch (error) {
      if (error instanceof PresenceUnavailable && this.#fallBack) {
        this.#stalls = error.stalled ? this.#stalls + 1 : 0;
        if (this.#stalls >= STALLS_BEFORE_POLLING) this.#transport = 'poll';
      }
      throw error;
    }
    if (this.#closed) return;
    // The service ended the stream (it is stopping, say): resumed from the cursor.
    this.#status('lost', { error: new PresenceUnavailable('the stream ended') });
    await this.#retry(null);
  }

  async #readStream() {
    const attempt = new AbortController();
    let reader = null;
    const stop = () => {
      attempt.abort();
      reader?.cancel().catch(() => {});
    };
    this.#closing.signal.addEventListener('abort', stop);
    let received = false;
    let silent = false;
    let watchdog = 0;
    // Heartbeats come every 10 s: silence for longer is a connection lost. Only the wait for
    // the service counts: not the time the hooks take.
    const watch = () => {
      watchdog = setTimeout(() => {
        silent = true;
        stop();
      }, this.#silenceMs);
    };
    try {
      watch();
      const response = await this.#request('changes', {
        ...this.#filter(),
        headers: { Accept: EVENT_STREAM, 'Last-Event-ID': this.#cursor },
        signal: attempt.signal,
      });
      clearTimeout(watchdog);
      reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      if (this.#closed) return; // closed while the reply was on its way
      if (!(response.headers.get('Content-Type') ?? '').startsWith(EVENT_STREAM)) {
        throw new PresenceUnavailable('not a stream', { stalled: true });
      }
      this.#status('live');
      const parser = new EventParser();
      for (;;) {
        watch();
        const { value, done } = await reader.read();
        clearTimeout(watchdog);
        if (silent) throw new Error('silent');
        if (done) return;
        received = true;
        this.#stalls = 0;
        this.#backoff = FIRST_BACKOFF_MS;
        for (const event of parser.feed(value)) await this.#event(event);
      }
    } catch (error) {
      if (silent && !this.#closed) {
        throw new PresenceUnavailable(`the stream was silent for ${this.#silenceMs} ms`, {
          stalled: !received,
        });
      }
      if (error instanceof PresenceError || error instanceof Reset) throw error;
      if (error instanceof InvalidCursor || this.#closed) throw error;
      throw new PresenceUnavailable(`the stream was lost: ${error}`);
    } finally {
      clearTimeout(watchdog);
      this.#closing.signal.removeEventListener('abort', stop);
      stop(); // whatever is left of the stream goes too (a reset, say, leaves it open)
    }
  }

  async #event(event) {
    if (event.event === 'reset' && event.data !== null) {
      throw new Reset(String(JSON.parse(event.data).reason));
    }
    if (event.event === 'change' && event.data !== null) {
      await this.#take({ ...JSON.parse(event.data), cursor: event.id, resync: false });
    }
    // After the change is taken: a reconnect resumes after the last one held.
    if (event.id) this.#cursor = event.id;
  }

  async #poll() {
    const { method, query, body } = this.#filter();
    query.push(['since', this.#cursor], ['limit', String(PAGE_SIZE)]);
    query.push(['wait', String(POLL_WAIT_SECONDS)]);
    const page = await this.#json('changes', {
      method,
      query,
      body,
      timeoutMs: POLL_WAIT_SECONDS * 1000 + this.#silenceMs,
    });
    this.#backoff = FIRST_BACKOFF_MS;
    this.#status('live');
    if (page.reset) throw new Reset(String(page.reason));
    for (const change of page.changes) await this.#take({ ...change, cursor: null, resync: false });
    this.#cursor = page.cursor;
  }

  // Waits before trying again: longer after each failure in a row, and never in step with
  // every other client of a replica that came back (jitter).
  async #retry(error) {
    let delay = this.#backoff;
    if (error instanceof PresenceUnavailable && error.retryAfterMs !== null) {
      delay = Math.max(delay, error.retryAfterMs);
    }
    this.#backoff = Math.min(this.#backoff * 2, MAX_BACKOFF_MS);
    await this.#sleep(delay * (0.5 + Math.random() / 2));
  }

  #sleep(ms) {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.#closing.signal.removeEventListener('abort', done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.#closing.signal.addEventListener('abort', done);
    });
  }

  // -- the snapshot, changes and resets ---------------------------------------------------------

  async #snapshot() {
    this.#status('loading', { listed: 0 });
    let versions = new Map();
    let online;
    let feedCursor = null;
    if (this.#identities === null) {
      let page = null;
      do {
        const query = [['versions', 'true'], ['limit', String(PAGE_SIZE)]];
        if (page && page.next_cursor) query.push(['cursor', page.next_cursor]);
        page = await this.#json('online', { query });
        // The first page's: the listing plus every change after it is the state.
        feedCursor = feedCursor ?? page.feed_cursor;
        for (const item of page.identities) versions.set(item.identity, item.version);
        if (page.next_cursor) this.#status('loading', { listed: versions.size });
      } while (page.next_cursor && !this.#closed);
      online = versions.keys();
    } else {
      // Taken before the lookup: a change the lookup misses comes after it on the feed.
      feedCursor = (await this.#json('online', { query: [['limit', '1']] })).feed_cursor;
      const found = await this.lookup(this.#identities);
      versions = new Map(found.filter((i) => i.version > 0).map((i) => [i.identity, i.version]));
      online = found.filter((i) => i.online).map((i) => i.identity);
    }
    if (this.#closed) return;
    const moved = this.#held.replace(versions, online);
    this.#cursor = feedCursor;
    this.#backoff = FIRST_BACKOFF_MS;
    if (!this.#resync) return;
    this.#resync = false;
    for (const [identity, nowOnline, version] of moved) {
      await this.#deliver({
        service_sid: this.#sid,
        identity,
        online: nowOnline,
        version,
        reason: null,
        event_id: null,
        changed_at: null,
        cursor: null,
        resync: true,
      });
    }
  }

  // Forgets the cursor: the next snapshot replaces what is held, and its changes are
  // delivered as a resync. What is held stays readable meanwhile.
  async #reset(reason) {
    this.#cursor = null;
    this.#resync = true;
    await this.#call(this.#onReset, reason);
  }

  async #take(change) {
    if (this.#held.take(change.identity, change.version, change.online)) {
      await this.#deliver(change);
    }
  }

  async #deliver(change) {
    for (const queue of this.#queues) this.#put(queue, change);
    await this.#call(this.#onChange, change);
  }

  // What a hook throws is logged, not let into the view (which would stop following).
  async #call(hook, value) {
    if (!hook) return;
    try {
      await hook(value);
    } catch (error) {
      console.error('a presence view hook threw', error);
    }
  }

  // -- requests ---------------------------------------------------------------------------------

  // The method, query and body that ask for the view's identities only.
  #filter() {
    if (this.#identities === null) return { method: 'GET', query: [], body: undefined };
    const query = this.#identities.map((name) => ['identity', name]);
    if (new URLSearchParams(query).toString().length <= QUERY_FILTER_MAX) {
      return { method: 'GET', query, body: undefined };
    }
    return { method: 'POST', query: [], body: { identities: this.#identities } };
  }

  async #json(path, options) {
    const attempt = new AbortController();
    const stop = () => attempt.abort();
    this.#closing.signal.addEventListener('abort', stop);
    const timer = setTimeout(stop, options.timeoutMs ?? REQUEST_MS);
    try {
      const response = await this.#request(path, { ...options, signal: attempt.signal });
      return await response.json();
    } catch (error) {
      if (error instanceof PresenceError || error instanceof InvalidCursor) throw error;
      throw new PresenceUnavailable(`${path}: ${error}`);
    } finally {
      clearTimeout(timer);
      this.#closing.signal.removeEventListener('abort', stop);
    }
  }

  // A request to /v1/services/<sid>/<path>: a 200, or an error thrown. A 401 goes to
  // onUnauthorized, and the request is made again once it resolves.
  async #request(path, { method = 'GET', query = [], body, headers = {}, signal }) {
    const search = query.length > 0 ? `?${new URLSearchParams(query)}` : '';
    const url = `${this.#base}v1/services/${encodeURIComponent(this.#sid)}/${path}${search}`;
    for (;;) {
      const token = typeof this.#token === 'function' ? await this.#token() : this.#token;
      const sent = { ...headers };
      if (token) sent.Authorization = `Bearer ${token}`;
      if (body !== undefined) sent['Content-Type'] = 'application/json';
      let response;
      try {
        response = await this.#fetch(url, {
          method,
          headers: sent,
          body: body === undefined ? undefined : JSON.stringify(body),
          cache: 'no-store',
          signal,
        });
      } catch (error) {
        throw new PresenceUnavailable(`${method} ${path}: ${error}`);
      }
      if (response.ok) return response;
      if (response.status === 401 && this.#onUnauthorized) {
        await response.body?.cancel();
        await this.#onUnauthorized(token ?? null);
        if (this.#closed) throw new PresenceError('closed');
        continue;
      }
      throw await refusal(response);
    }
  }
}

// The error a reply other than 200 stands for.
async function refusal(response) {
  const text = await response.text().catch(() => '');
  let reply = null;
  try {
    reply = JSON.parse(text);
  } catch {
    // a proxy's page, say: its status says enough
  }
  const code = reply && typeof reply.error === 'string' ? reply.error : '';
  const message = reply && typeof reply.message === 'string' ? reply.message : text.slice(0, 200);
  const status = response.status;
  if (status === 400 && code === 'invalid_cursor') return new InvalidCursor(message);
  if ([400, 401, 403, 404].includes(status)) return new PresenceRefused(status, code, message);
  const seconds = Number(response.headers.get('Retry-After'));
  return new PresenceUnavailable(`${status} ${code || text.slice(0, 200)}`, {
    status,
    code,
    retryAfterMs: Number.isFinite(seconds) && seconds > 0 ? seconds * 1000 : null,
  });
}
