// The Server-Sent Events parser and what a view holds: node --test (tests/test_client_js.py
// runs it).
import assert from 'node:assert/strict';
import test from 'node:test';

import { EventParser, Held } from '../presence.js';

const STREAM =
  ': a comment\r\n' +
  'id: c1\r\nevent: change\r\ndata: {"identity":"alice"}\r\n\r\n' +
  'id: c2\n\n' +
  'event: reset\rdata: {"reason":"lost"}\rid: c3\r\r' +
  'data: one\ndata\ndata:  two\n\n';
const EVENTS = [
  { event: 'change', data: '{"identity":"alice"}', id: 'c1' },
  { event: 'message', data: null, id: 'c2' },
  { event: 'reset', data: '{"reason":"lost"}', id: 'c3' },
  { event: 'message', data: 'one\n\n two', id: null },
];

test('events are the same however the stream is cut', () => {
  for (let size = 1; size <= STREAM.length; size += 1) {
    const parser = new EventParser();
    const events = [];
    for (let at = 0; at < STREAM.length; at += size) {
      events.push(...parser.feed(STREAM.slice(at, at + size)));
    }
    assert.deepEqual(events, EVENTS, `chunks of ${size}`);
  }
});

test('a CR LF cut between its two halves ends one line, not two', () => {
  const parser = new EventParser();
  assert.deepEqual(parser.feed('data: a\r'), []);
  assert.deepEqual(parser.feed('\ndata: b\r\n\r\n'), [{ event: 'message', data: 'a\nb', id: null }]);
});

test('a byte order mark at the start is skipped, an id with NUL ignored', () => {
  const parser = new EventParser();
  const events = parser.feed('\ufeffid: good\n\nid: b\0ad\ndata: x\n\n');
  assert.deepEqual(events, [
    { event: 'message', data: null, id: 'good' },
    { event: 'message', data: 'x', id: null },
  ]);
});

test('an identity with a line separator in its JSON stays one line', () => {
  const parser = new EventParser();
  const data = '{"identity":"a\u2028b\u0085c"}';
  assert.deepEqual(parser.feed(`data: ${data}\n\n`), [{ event: 'message', data, id: null }]);
});

test('a change is taken only above the version held', () => {
  const held = new Held();
  assert.equal(held.take('alice', 3, true), true);
  assert.equal(held.take('alice', 3, false), false);
  assert.equal(held.take('alice', 2, false), false);
  assert.deepEqual([...held.online], ['alice']);
  assert.equal(held.take('alice', 4, false), true);
  assert.deepEqual([...held.online], []);
});

test('a snapshot replaces all held and says only whose state it changes', () => {
  const held = new Held();
  held.take('alice', 5, true);
  held.take('bob', 2, true);
  held.take('carol', 9, false);
  const moved = held.replace(new Map([['bob', 1], ['dave', 1]]), ['bob', 'dave']);
  assert.deepEqual(moved, [['dave', true, 1], ['alice', false, 0]]);
  // The versions went with the reset: bob's version 2 may be another change now.
  assert.equal(held.take('bob', 2, false), true);
  assert.equal(held.take('carol', 1, true), true);
});
