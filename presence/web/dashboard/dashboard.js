// presence dashboard: who is online in one Twilio Sync service, updated live.
//
// How the page stays exact (docs/dashboard.md): the JavaScript client does it (presence.js, the
// very file of clients/js/, served beside this one). Its view reads the snapshot (every page of
// GET /online?versions=true, keeping the listing's feed_cursor), follows the change feed from
// that cursor as Server-Sent Events read through fetch (an EventSource cannot send the
// Authorization header), takes a change only above the version it holds, resumes from its last
// cursor after a lost connection, and after a reset reads the snapshot again and says which
// identities it changed (a resync). The feed carries only published changes: an identity inside
// its grace period is still published online. Which of the rows on screen are pending offline,
// and their endpoints, comes from POST /lookup of those rows, repeated every second and after
// each change. Counts come from GET /stats and the chart from GET /activity, polled.
//
// Every identity is untrusted text: it only ever reaches the page through textContent or an
// attribute value, never as markup.
import { PresenceView } from './presence.js';

const SID_PATTERN = /^IS[0-9a-fA-F]{32}$/;
const TOKEN_KEY = 'presence.apiToken';
const LOOKUP_MAX = 1000; // the most names one /lookup takes
const LOOKUP_EVERY_MS = 1000; // a grace period is seconds long: pending must show within it
const STATS_EVERY_MS = 3000;
const ACTIVITY_EVERY_MS = 5000; // each replica adds its counts to Redis every 2 s
const NUDGE_GAP_MS = 150; // a burst of changes makes one early refresh, not one each
const OFFLINE_LINGER_MS = 120000; // an identity gone offline stays listed this long
const TIMELINE_MAX = 200;
const OVERSCAN_ROWS = 6;
const OUTCOMES = ['applied', 'duplicate', 'stale', 'ignored', 'rejected'];

const $ = (id) => document.getElementById(id);
const byName = (a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0);
const formatCount = (n) => Number(n).toLocaleString();
const clock = (date) => date.toLocaleTimeString([], { hour12: false });

// ---------------------------------------------------------------------------------------------
// The API token: asked for only when the API answers 401, kept in sessionStorage (this tab, this
// browser session), sent only as a header.

const auth = {
  token: sessionStorage.getItem(TOKEN_KEY),
  waiting: null,
  resolve: null,

  // Called after a 401 to a request sent with `sent` (a token or null). Resolves once there is
  // a token worth retrying with.
  ask(sent) {
    if (this.token !== null && this.token !== sent) {
      return Promise.resolve(); // a newer token came while this request was out
    }
    if (this.token !== null) {
      this.forget();
      showTokenForm('The service refused that token. Enter its current API token.');
    } else if (!this.waiting) {
      showTokenForm(null);
    }
    if (!this.waiting) {
      this.waiting = new Promise((resolve) => {
        this.resolve = resolve;
      });
    }
    return this.waiting;
  },

  set(token) {
    this.token = token;
    sessionStorage.setItem(TOKEN_KEY, token);
    $('forget-token').hidden = false;
    const resolve = this.resolve;
    this.waiting = null;
    this.resolve = null;
    if (resolve) resolve();
  },

  forget() {
    this.token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    $('forget-token').hidden = true;
  },
};

function showTokenForm(message) {
  const form = $('token-form');
  if (message) $('token-message').textContent = message;
  form.hidden = false;
  setStatus('token', 'Waiting for the API token.');
  $('token').focus();
}

class ApiError extends Error {
  constructor(status, body) {
    super(`${status} ${body && body.error ? body.error : ''}`.trim());
    this.status = status;
    this.body = body;
  }
}

// A request to /v1/services/<sid>/<path>. A 401 waits for a token and tries again; every other
// reply is returned as it is.
async function api(session, path, { method = 'GET', body, headers = {} } = {}) {
  for (;;) {
    const token = auth.token;
    const sent = { ...headers };
    if (token !== null) sent.Authorization = `Bearer ${token}`;
    if (body !== undefined) sent['Content-Type'] = 'application/json';
    // Relative: resolved against the page's own URL, so a path prefix of a proxy is kept.
    const response = await fetch(`v1/services/${session.sid}/${path}`, {
      method,
      headers: sent,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: 'no-store',
      signal: session.abort.signal,
    });
    if (response.status !== 401) return response;
    await response.body?.cancel();
    await auth.ask(token);
    if (!session.alive) throw new ApiError(401, null);
  }
}

async function json(response) {
  const body = await response.json().catch(() => null);
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

// ---------------------------------------------------------------------------------------------
// A session: one service followed, from its snapshot on. Choosing another service, or forgetting
// the token, closes it and starts a new one; everything it started stops with it. A reset of the
// feed does not: the view reads the snapshot again, and the session follows on.

class Session {
  constructor(sid) {
    this.sid = sid;
    this.alive = true;
    this.abort = new AbortController();
    this.records = new Map(); // identity -> record
    this.sorted = []; // the records, by name (code units: the same order in every browser)
    this.presence = null; // the client's view of the service: what is published, kept exact
    this.following = false; // its snapshot is read: the list shows it
    this.lost = false; // the connection to the service is lost (said once, until it is back)
    this.reset = false; // the feed was reset: versions change with the snapshot read again
    this.closers = new Set();
    this.nudge = { lookup: () => {}, stats: () => {}, activity: () => {} };
  }

  close() {
    this.alive = false;
    this.abort.abort();
    for (const close of this.closers) close();
  }
}

// A record: what the page knows of one identity.
//   state: 'online' | 'pending' | 'offline'; endpoints: null until looked up;
//   version: of the state shown (from the view or a lookup, whichever is newer).
function newRecord(name, state, version) {
  return {
    name,
    lower: name.toLowerCase(),
    state,
    endpoints: null,
    version,
    offlineAt: state === 'offline' ? Date.now() : 0,
  };
}

// Where record's name is, or would be, in the list sorted by name (a binary search).
function placeOf(sorted, record) {
  let low = 0;
  let high = sorted.length;
  while (low < high) {
    const middle = (low + high) >>> 1;
    if (sorted[middle].name < record.name) low = middle + 1;
    else high = middle;
  }
  return low;
}

function insertSorted(sorted, record) {
  sorted.splice(placeOf(sorted, record), 0, record);
}

function removeSorted(sorted, record) {
  const place = placeOf(sorted, record);
  if (sorted[place] === record) sorted.splice(place, 1);
}

let current = null;

function begin(sid, { keepTimeline = false } = {}) {
  if (current) current.close();
  if (!keepTimeline) {
    // Another service: nothing of the previous one stays on screen.
    clearTimeline();
    for (const id of ['count-online', 'count-pending', 'count-endpoints']) $(id).textContent = '–';
    $('chart').replaceChildren();
    $('activity-totals').replaceChildren();
    lastActivity = '';
  }
  document.title = `presence · ${sid}`;
  $('main').hidden = false;
  current = new Session(sid);
  view.reset(current);
  run(current);
}

async function run(session) {
  const presence = new PresenceView({
    serviceSid: session.sid, // no URL: requests relative to the page, a proxy's prefix kept
    token: () => auth.token,
    onUnauthorized: (sent) => auth.ask(sent),
    onChange: (change) => applyChange(session, change),
    onReset: (reason) => forgetOffline(session, reason),
    onStatus: (status) => showStatus(session, status),
  });
  session.presence = presence;
  session.closers.add(() => presence.close());
  try {
    await presence.start();
  } catch (error) {
    if (session.alive) setStatus('lost', `Cannot follow this service: ${error.message}.`);
    return;
  }
  if (!session.alive) return;
  session.following = true;
  for (const name of presence.online()) {
    session.records.set(name, newRecord(name, 'online', presence.version(name)));
  }
  session.sorted = [...session.records.values()].sort(byName);
  view.changed();
  session.nudge.lookup = poller(session, LOOKUP_EVERY_MS, () => lookUpVisible(session));
  session.nudge.stats = poller(session, STATS_EVERY_MS, () => refreshStats(session));
  session.nudge.activity = poller(session, ACTIVITY_EVERY_MS, () => refreshActivity(session));
  const sweeper = setInterval(() => dropLongOffline(session), 5000);
  session.closers.add(() => clearInterval(sweeper));
}

// Runs `task` every `intervalMs` while the session lives (not while the tab is hidden); the
// function it returns runs it early, once for any number of calls in a burst.
function poller(session, intervalMs, task) {
  let wake = () => {};
  let timer = 0;
  let nudged = false;
  (async () => {
    while (session.alive) {
      nudged = false;
      if (!document.hidden) {
        try {
          await task();
        } catch (error) {
          // The next round tries again; the feed's status line says when the service is away.
        }
      }
      await new Promise((resolve) => {
        wake = resolve;
        timer = setTimeout(resolve, nudged ? NUDGE_GAP_MS : intervalMs);
      });
    }
  })();
  session.closers.add(() => {
    clearTimeout(timer);
    wake();
  });
  return () => {
    if (nudged) return;
    nudged = true;
    clearTimeout(timer);
    timer = setTimeout(() => wake(), NUDGE_GAP_MS);
  };
}

// ---------------------------------------------------------------------------------------------
// What the view says: its status, its changes, its resets

function showStatus(session, status) {
  if (!session.alive) return;
  if (status.state === 'loading') {
    const listed = status.listed ? ` ${formatCount(status.listed)}` : '';
    setStatus('loading', `Reading who is online…${listed}`);
  } else if (status.state === 'live') {
    if (session.reset) {
      // The snapshot was read again: its versions are the ones changes and lookups follow.
      session.reset = false;
      for (const record of session.records.values()) {
        record.version = session.presence.version(record.name);
      }
    }
    if (session.lost) {
      note('Reconnected: replaying the changes missed from the last cursor.');
      setStatus('live', `Live again since ${clock(new Date())}: caught up from the last cursor.`);
      session.nudge.lookup();
      session.nudge.stats();
      session.nudge.activity();
    } else {
      setStatus('live', 'Live.');
    }
    session.lost = false;
  } else if (status.state === 'lost') {
    if (!session.following) {
      setStatus('lost', `Cannot read who is online (${status.error?.message}); trying again.`);
      return;
    }
    if (!session.lost) note('Connection to the service lost.');
    session.lost = true;
    setStatus('lost', 'Connection lost: reconnecting…');
  }
}

// The feed could not resume: the view reads who is online again, then says who changed (a
// resync). Identities kept on screen only because they went offline recently go now: what
// they were is from before the reset.
function forgetOffline(session, reason) {
  if (!session.alive) return;
  note(`Reloading who is online: the feed was reset (${reason}).`);
  session.reset = true;
  for (const record of [...session.records.values()]) {
    if (record.state === 'offline') forget(session, record);
  }
  view.changed();
}

function forget(session, record) {
  session.records.delete(record.name);
  removeSorted(session.sorted, record);
}

// The view gives each change once, newer than any it gave before for that identity.
function applyChange(session, change) {
  if (!session.alive || change.service_sid !== session.sid) return;
  let record = session.records.get(change.identity);
  if (change.resync) {
    // Found by reading who is online again: not a change of now, not in the timeline. Gone
    // from the listing means gone from the list.
    if (!change.online) {
      if (record) forget(session, record);
    } else if (!record) {
      record = newRecord(change.identity, 'online', change.version);
      session.records.set(record.name, record);
      insertSorted(session.sorted, record);
    } else {
      Object.assign(record, { state: 'online', version: change.version, offlineAt: 0 });
    }
    view.changed();
    session.nudge.lookup();
    session.nudge.stats();
    return;
  }
  addToTimeline(change);
  if (!record) {
    record = newRecord(change.identity, change.online ? 'online' : 'offline', 0);
    session.records.set(record.name, record);
    insertSorted(session.sorted, record);
  }
  // Not over a lookup of the same version: that one may know more (pending offline).
  if (change.version > record.version) {
    record.version = change.version;
    record.state = change.online ? 'online' : 'offline';
    record.offlineAt = change.online ? 0 : Date.now();
    if (!change.online) record.endpoints = [];
  }
  view.changed();
  session.nudge.lookup();
  session.nudge.stats();
}

// Identities offline for a while leave the list (a search finds only who is, or just was,
// online).
function dropLongOffline(session) {
  const before = Date.now() - OFFLINE_LINGER_MS;
  let dropped = false;
  for (const record of [...session.records.values()]) {
    if (record.state === 'offline' && record.offlineAt < before) {
      forget(session, record);
      dropped = true;
    }
  }
  if (dropped) view.changed();
}

// ---------------------------------------------------------------------------------------------
// 3. Lookups of the rows on screen: pending offline and endpoints

async function lookUpVisible(session) {
  const names = view.visibleNames().slice(0, LOOKUP_MAX);
  if (names.length === 0) return;
  const identities = await session.presence.lookup(names);
  let moved = false;
  for (const found of identities) {
    const record = session.records.get(found.identity);
    // Older than what the feed already said (the lookup crossed a change): not shown. The
    // same version can still say more: pending offline is never published.
    if (!record || found.version < record.version) continue;
    record.version = found.version;
    record.endpoints = found.endpoints;
    const state = !found.online ? 'offline' : found.pending_offline ? 'pending' : 'online';
    if (state === 'offline' && record.state !== 'offline') record.offlineAt = Date.now();
    if (state !== record.state) moved = true;
    record.state = state;
  }
  view.repaint();
  // An identity went pending (or came back) without a change on the feed: the counts did too.
  if (moved) session.nudge.stats();
}

// ---------------------------------------------------------------------------------------------
// Counts and the activity chart

async function refreshStats(session) {
  const counts = $('counts');
  try {
    const stats = await json(await api(session, 'stats'));
    if (!session.alive) return;
    $('count-online').textContent = formatCount(stats.online);
    $('count-pending').textContent = formatCount(stats.pending_offline);
    $('count-endpoints').textContent = formatCount(stats.endpoints);
    delete counts.dataset.stale;
  } catch (error) {
    if (session.alive) counts.dataset.stale = 'true';
    throw error;
  }
}

async function refreshActivity(session) {
  const { minutes } = await json(await api(session, 'activity'));
  if (session.alive) drawActivity(minutes);
}

const SVG = 'http://www.w3.org/2000/svg';
let lastActivity = '';

function svg(name, attributes = {}) {
  const element = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
  return element;
}

// Stacked bars of the webhook outcomes per minute, and below them the flaps suppressed, each
// scaled to its own largest minute. The totals are also written out as text.
function drawActivity(minutes) {
  const drawn = JSON.stringify(minutes);
  if (drawn === lastActivity) return;
  lastActivity = drawn;
  const width = 10;
  const top = 92;
  const flapsTop = 100;
  const flapsHeight = 20;
  const totalOf = (minute) => OUTCOMES.reduce((sum, name) => sum + minute[name], 0);
  const peak = Math.max(1, ...minutes.map(totalOf));
  const flapPeak = Math.max(1, ...minutes.map((minute) => minute.flaps_suppressed));
  const chart = svg('svg', {
    viewBox: `0 0 ${minutes.length * width} ${flapsTop + flapsHeight}`,
    preserveAspectRatio: 'none',
    role: 'img',
    'aria-label': 'Webhook outcomes and flaps suppressed per minute over the last hour',
  });
  chart.append(svg('line', { x1: 0, x2: minutes.length * width, y1: top, y2: top, class: 'base' }));
  minutes.forEach((minute, index) => {
    const group = svg('g');
    const title = svg('title');
    const parts = [...OUTCOMES, 'flaps_suppressed'].map((name) => `${name} ${minute[name]}`);
    title.textContent = `${minute.minute}: ${parts.join(', ')}`;
    group.append(title);
    // A full-height transparent column: the minute's title shows wherever the pointer is.
    group.append(svg('rect', { x: index * width, y: 0, width, height: top, class: 'hit' }));
    let y = top;
    for (const name of OUTCOMES) {
      if (minute[name] === 0) continue;
      const height = Math.max(1, (minute[name] / peak) * (top - 2));
      y -= height;
      group.append(svg('rect', { x: index * width + 1, y, width: width - 2, height, class: name }));
    }
    if (minute.flaps_suppressed > 0) {
      const height = Math.max(2, (minute.flaps_suppressed / flapPeak) * flapsHeight);
      const y0 = flapsTop + flapsHeight - height;
      const attributes = { x: index * width + 1, y: y0, width: width - 2, height };
      group.append(svg('rect', { ...attributes, class: 'flaps_suppressed' }));
    }
    chart.append(group);
  });
  $('chart').replaceChildren(chart);

  const totals = $('activity-totals');
  const items = [...OUTCOMES, 'flaps_suppressed'].map((name) => {
    const item = document.createElement('li');
    item.dataset.outcome = name;
    const swatch = document.createElement('span');
    swatch.className = `swatch ${name}`;
    const label = document.createElement('span');
    label.textContent = name === 'flaps_suppressed' ? 'flaps suppressed' : name;
    const count = document.createElement('strong');
    count.textContent = formatCount(minutes.reduce((sum, minute) => sum + minute[name], 0));
    item.append(swatch, label, count);
    return item;
  });
  totals.replaceChildren(...items);
}

// ---------------------------------------------------------------------------------------------
// The list: only the rows in view exist (a few dozen elements for 50,000 identities), placed
// over a block as tall as all of them, so the scrollbar and keyboard scrolling behave as usual.

const STATE_TEXT = { online: 'online', pending: 'pending offline', offline: 'offline' };

const view = {
  session: null,
  shown: [], // the records that match the search, in order
  query: '',
  rowHeight: 0,
  pool: [],
  first: 0,
  count: 0,
  dirty: false, // `shown` needs to be filtered again
  frame: 0,

  reset(session) {
    this.session = session;
    this.shown = [];
    this.dirty = true;
    $('list').scrollTop = 0;
    this.repaint();
  },

  changed() {
    this.dirty = true;
    this.repaint();
  },

  // Once per animation frame, however many changes came in it.
  repaint() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.render();
    });
  },

  filter() {
    const sorted = this.session ? this.session.sorted : [];
    const query = this.query.toLowerCase();
    this.shown = query ? sorted.filter((record) => record.lower.includes(query)) : sorted;
    this.dirty = false;
  },

  measure() {
    const probe = makeRow();
    $('list-rows').append(probe);
    this.rowHeight = probe.getBoundingClientRect().height || 40;
    probe.remove();
  },

  render() {
    flushTimeline();
    if (this.dirty) this.filter();
    if (!this.rowHeight) this.measure();
    const list = $('list');
    const rows = $('list-rows');
    const total = this.shown.length;
    rows.style.height = `${total * this.rowHeight}px`;
    const first = Math.max(0, Math.floor(list.scrollTop / this.rowHeight) - OVERSCAN_ROWS);
    const end = Math.min(
      total,
      Math.ceil((list.scrollTop + list.clientHeight) / this.rowHeight) + OVERSCAN_ROWS,
    );
    while (this.pool.length < end - first) {
      const row = makeRow();
      rows.append(row);
      this.pool.push(row);
    }
    this.pool.forEach((row, slot) => {
      const index = first + slot;
      if (index >= end) {
        row.hidden = true;
        return;
      }
      row.hidden = false;
      fillRow(row, this.shown[index], index, total, this.rowHeight);
    });
    this.first = first;
    this.count = end - first;
    renderSummary(total);
  },

  visibleNames() {
    return this.shown.slice(this.first, this.first + this.count).map((record) => record.name);
  },
};

function makeRow() {
  const row = document.createElement('div');
  row.className = 'row';
  row.setAttribute('role', 'listitem');
  const dot = document.createElement('span');
  dot.className = 'dot';
  dot.setAttribute('aria-hidden', 'true');
  const state = document.createElement('span');
  state.className = 'visually-hidden state';
  const name = document.createElement('span');
  name.className = 'name';
  const endpoints = document.createElement('span');
  endpoints.className = 'endpoints';
  row.append(dot, state, name, endpoints);
  return row;
}

function fillRow(row, record, index, total, height) {
  const [dot, state, name, endpoints] = row.children;
  row.style.transform = `translateY(${index * height}px)`;
  row.setAttribute('aria-posinset', String(index + 1));
  row.setAttribute('aria-setsize', String(total));
  row.dataset.state = record.state;
  dot.dataset.state = record.state;
  state.textContent = `${STATE_TEXT[record.state]}: `;
  name.textContent = record.name;
  name.title = record.name;
  endpoints.textContent = endpointsText(record);
}

function endpointsText(record) {
  if (record.state === 'offline') {
    return record.offlineAt ? `offline since ${clock(new Date(record.offlineAt))}` : 'offline';
  }
  if (record.endpoints === null) return '';
  if (record.endpoints.length === 0) return 'no endpoint connected';
  return record.endpoints.join(', ');
}

function renderSummary(total) {
  const all = view.session ? view.session.sorted.length : 0;
  let text;
  if (view.query) {
    text = `${formatCount(total)} of ${formatCount(all)} match`;
  } else {
    text = `${formatCount(all)} listed`;
  }
  const summary = $('list-summary');
  if (summary.textContent !== text) summary.textContent = text;
}

// ---------------------------------------------------------------------------------------------
// The timeline: the newest first, at most TIMELINE_MAX entries.

let timelineQueue = [];

function addToTimeline(change) {
  timelineQueue.push({ change });
  view.repaint();
}

function note(text) {
  timelineQueue.push({ note: text, at: new Date() });
  view.repaint();
}

function clearTimeline() {
  timelineQueue = [];
  $('timeline').replaceChildren();
  $('timeline-empty').hidden = false;
}

function flushTimeline() {
  if (timelineQueue.length === 0) return;
  const items = timelineQueue.slice(-TIMELINE_MAX).reverse().map(timelineItem);
  timelineQueue = [];
  const list = $('timeline');
  list.prepend(...items);
  while (list.childElementCount > TIMELINE_MAX) list.lastElementChild.remove();
  $('timeline-empty').hidden = true;
}

function timelineItem(entry) {
  const item = document.createElement('li');
  const time = document.createElement('time');
  if (entry.note) {
    item.className = 'note';
    time.dateTime = entry.at.toISOString();
    time.textContent = clock(entry.at);
    const text = document.createElement('span');
    text.className = 'what';
    text.textContent = entry.note;
    item.append(time, text);
    return item;
  }
  const { change } = entry;
  const state = change.online ? 'online' : 'offline';
  item.className = 'change';
  item.dataset.state = state;
  time.dateTime = change.changed_at;
  time.textContent = clock(new Date(change.changed_at));
  const dot = document.createElement('span');
  dot.className = 'dot';
  dot.dataset.state = state;
  dot.setAttribute('aria-hidden', 'true');
  const who = document.createElement('span');
  who.className = 'who';
  who.textContent = change.identity;
  const what = document.createElement('span');
  what.className = 'what';
  what.textContent = state;
  const reason = document.createElement('span');
  reason.className = 'reason';
  reason.dataset.reason = change.reason;
  reason.textContent = change.reason;
  item.append(time, dot, who, what, reason);
  return item;
}

// ---------------------------------------------------------------------------------------------
// The page around it

function setStatus(state, text) {
  const status = $('status');
  status.dataset.state = state;
  if (status.textContent !== text) status.textContent = text;
}

function showService() {
  const sid = location.hash.slice(1);
  if (!sid) return;
  $('service-sid').value = sid;
  if (!SID_PATTERN.test(sid)) {
    showSidError();
    return;
  }
  $('service-error').hidden = true;
  $('service-sid').removeAttribute('aria-invalid');
  if (!current || current.sid !== sid) begin(sid);
}

function showSidError() {
  const input = $('service-sid');
  const error = $('service-error');
  error.textContent = 'A ServiceSid is IS followed by 32 hexadecimal digits.';
  error.hidden = false;
  input.setAttribute('aria-invalid', 'true');
  input.focus();
}

function wire() {
  $('service-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const input = $('service-sid');
    const sid = input.value.trim();
    if (!SID_PATTERN.test(sid)) {
      showSidError();
      return;
    }
    $('service-error').hidden = true;
    input.removeAttribute('aria-invalid');
    // Remembered in the fragment: a bookmark or a reload shows the same service, and the
    // fragment never reaches the server or its logs.
    if (location.hash !== `#${sid}`) location.hash = sid;
    else begin(sid);
  });
  window.addEventListener('hashchange', showService);

  $('token-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const input = $('token');
    const token = input.value.trim();
    if (!token) {
      input.focus();
      return;
    }
    input.value = '';
    $('token-form').hidden = true;
    // The field is gone: the focus goes on to the list's search, not back to the top.
    $('search').focus();
    setStatus('loading', 'Trying the token…');
    auth.set(token);
  });
  $('forget-token').hidden = auth.token === null;
  $('forget-token').addEventListener('click', () => {
    auth.forget();
    if (current) begin(current.sid, { keepTimeline: true });
  });

  let typing = 0;
  const search = () => {
    clearTimeout(typing);
    typing = setTimeout(() => {
      const query = $('search').value.trim();
      if (query === view.query) return;
      view.query = query;
      $('list').scrollTop = 0;
      view.changed();
      if (current) current.nudge.lookup();
    }, 80);
  };
  // `change` too: a field emptied by a script or an autofill may send no `input`.
  $('search').addEventListener('input', search);
  $('search').addEventListener('change', search);
  $('list').addEventListener('scroll', () => {
    view.repaint();
    if (current) current.nudge.lookup();
  });
  // Rows change height with the width of the page (two lines on a phone).
  new ResizeObserver(() => {
    view.rowHeight = 0;
    view.repaint();
  }).observe($('list'));
  document.addEventListener('visibilitychange', () => {
    if (document.hidden || !current) return;
    current.nudge.lookup();
    current.nudge.stats();
    current.nudge.activity();
  });

  showService();
  if (!current) $('service-sid').focus();
}

wire();
