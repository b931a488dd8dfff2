// presence dashboard: the push subscriptions panel (docs/push.md).
//
// On its own, apart from the page's feed code: it reads the service from the page's fragment,
// and GET /v1/services/<sid>/subscriptions every few seconds, with the API token the page keeps
// in sessionStorage (it never asks for one: the page does, on its first 401). It shows each
// subscription's state and lag, never a secret: the API shows none. URLs and descriptions are
// untrusted text, set through textContent only.
'use strict';

(() => {
  const SID_PATTERN = /^IS[0-9a-fA-F]{32}$/;
  const TOKEN_KEY = 'presence.apiToken'; // the page's own key (dashboard.js)
  const EVERY_MS = 3000;
  const FAILURES = {
    timeout: 'timed out',
    connect: 'could not connect',
    tls: 'TLS failed',
    dns: 'name not found',
    address_refused: 'private address refused',
  };

  const $ = (id) => document.getElementById(id);
  let sid = null;
  let timer = 0;
  let asking = null; // the AbortController of the request in flight

  function show(message, rows = []) {
    $('subscriptions-message').textContent = message;
    $('subscriptions-message').hidden = message === '';
    $('subscriptions-table').hidden = rows.length === 0;
    $('subscriptions-rows').replaceChildren(...rows);
  }

  function cell(text, className) {
    const td = document.createElement('td');
    td.textContent = text;
    if (className) td.className = className;
    return td;
  }

  function when(iso) {
    return iso === null ? '–' : new Date(iso).toLocaleTimeString([], { hour12: false });
  }

  function lag(seconds) {
    if (seconds < 1) return '0 s';
    if (seconds < 120) return `${Math.round(seconds)} s`;
    if (seconds < 7200) return `${Math.round(seconds / 60)} min`;
    return `${Math.round(seconds / 3600)} h`;
  }

  function failure(subscription) {
    const last = subscription.last_failure;
    if (last === null) return '–';
    const what = typeof last === 'number' ? `HTTP ${last}` : FAILURES[last] ?? String(last);
    const times = subscription.consecutive_failures;
    const streak = times > 0 ? `, ${times}× in a row` : '';
    return `${what} at ${when(subscription.last_failure_at)}${streak}`;
  }

  function row(subscription) {
    const tr = document.createElement('tr');
    tr.dataset.id = subscription.id;
    tr.dataset.state = subscription.state;
    const state = cell('', 'state');
    const dot = document.createElement('span');
    dot.className = 'push-dot';
    dot.dataset.state = subscription.state;
    state.append(dot, document.createTextNode(subscription.state));
    const target = cell(subscription.url, 'target');
    if (subscription.description) {
      const note = document.createElement('span');
      note.className = 'description';
      note.textContent = subscription.description;
      target.append(note);
    }
    tr.append(
      state,
      target,
      cell(lag(subscription.lag_seconds), 'lag'),
      cell(when(subscription.last_success_at), 'success'),
      cell(failure(subscription), 'failure'),
    );
    return tr;
  }

  async function refresh() {
    const asked = sid;
    if (asked === null || document.hidden) return;
    asking?.abort();
    asking = new AbortController();
    const token = sessionStorage.getItem(TOKEN_KEY);
    let response;
    try {
      response = await fetch(`v1/services/${asked}/subscriptions`, {
        headers: token === null ? {} : { Authorization: `Bearer ${token}` },
        cache: 'no-store',
        signal: asking.signal,
      });
    } catch (error) {
      if (error.name !== 'AbortError' && asked === sid) {
        show('The service does not answer; trying again.');
      }
      return;
    }
    const body = await response.json().catch(() => null);
    if (asked !== sid) return;
    if (response.status === 401) {
      show('Waiting for the API token.');
    } else if (response.status === 403) {
      show(`Push subscriptions are off here: ${body?.message ?? 'forbidden'}.`);
    } else if (!response.ok || body === null) {
      show(`The service answered ${response.status}; trying again.`);
    } else if (body.subscriptions.length === 0) {
      show('No push subscriptions. Add one with: presence subscriptions … add URL');
    } else {
      show('', body.subscriptions.map(row));
    }
  }

  function follow() {
    const wanted = location.hash.slice(1);
    const next = SID_PATTERN.test(wanted) ? wanted : null;
    if (next === sid) return;
    sid = next;
    asking?.abort();
    clearInterval(timer);
    show(sid === null ? '' : 'Reading the push subscriptions…');
    if (sid === null) return;
    refresh();
    timer = setInterval(refresh, EVERY_MS);
  }

  window.addEventListener('hashchange', follow);
  document.addEventListener('visibilitychange', refresh);
  follow();
})();
