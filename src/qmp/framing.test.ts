import { test } from 'node:test';
import assert from 'node:assert/strict';
import { JsonFramer, type Frame } from './framing.js';

const enc = new TextEncoder();
const MiB = 1024 * 1024;

function frameAll(chunks: readonly string[], maxMessageBytes = MiB): Frame[] {
  const framer = new JsonFramer({ maxMessageBytes });
  const frames: Frame[] = [];
  for (const chunk of chunks) frames.push(...framer.push(enc.encode(chunk)));
  frames.push(...framer.end());
  return frames;
}

function texts(frames: readonly Frame[]): string[] {
  return frames.map((f) => (f.kind === 'oversized' ? `<oversized ${f.size}>` : f.kind === 'invalid' ? `<invalid ${f.text}>` : f.text));
}

test('one message per line, LF and CRLF', () => {
  assert.deepEqual(texts(frameAll(['{"execute":"a"}\n{"execute":"b"}\r\n'])), ['{"execute":"a"}', '{"execute":"b"}']);
});

test('a message split byte by byte frames once', () => {
  const msg = '{"execute":"migrate","arguments":{"uri":"tcp:[::1]:4444"},"id":[1,{"x":"}"}]}\r\n';
  assert.deepEqual(texts(frameAll([...msg])), [msg.trim()]);
});

test('coalesced messages without newlines frame separately (as QEMU python clients send them)', () => {
  assert.deepEqual(texts(frameAll(['{"a":1}{"b":2}[3]'])), ['{"a":1}', '{"b":2}', '[3]']);
});

test('braces and escaped quotes inside strings do not count', () => {
  const msg = String.raw`{"s":"a \"}\" {[ ]\\"}`;
  assert.deepEqual(texts(frameAll([msg + '\n'])), [msg]);
});

test('a message may span lines, as in QEMU', () => {
  assert.deepEqual(texts(frameAll(['{"execute":\n', '  "stop"\n}\n'])), ['{"execute":\n  "stop"\n}']);
});

test('top-level scalars end at whitespace or at the next value', () => {
  assert.deepEqual(texts(frameAll(['42\nnul\n"str"{"a":1}true'])), ['42', 'nul', '"str"', '{"a":1}', 'true']);
});

test('garbage before an object is framed apart from it', () => {
  assert.deepEqual(texts(frameAll(['\u00ff{"execute":"x"}\n'])), ['\u00ff', '{"execute":"x"}']);
});

test('a stray closer and a mismatched closer are invalid, and framing continues', () => {
  assert.deepEqual(texts(frameAll(['}\n{"a":[1}\n{"b":2}\n'])), ['<invalid }>', '<invalid {"a":[1}>', '{"b":2}']);
});

test('a raw newline inside a string ends the message as invalid so the next line parses', () => {
  const frames = frameAll(['{"execute":"oops\n{"execute":"ok"}\n']);
  assert.equal(frames[0]?.kind, 'invalid');
  assert.deepEqual(texts(frames.slice(1)), ['{"execute":"ok"}']);
});

test('multi-byte UTF-8 split across chunks survives', () => {
  const bytes = enc.encode('{"name":"caf\u00e9 \u{1f680}"}');
  const framer = new JsonFramer({ maxMessageBytes: MiB });
  const frames: Frame[] = [];
  for (const b of bytes) frames.push(...framer.push(Uint8Array.of(b)));
  assert.deepEqual(texts(frames), ['{"name":"caf\u00e9 \u{1f680}"}']);
});

test('a message over the cap is reported once and nothing after it is framed', () => {
  const framer = new JsonFramer({ maxMessageBytes: 1000 });
  const first = framer.push(enc.encode('{"a":"' + 'x'.repeat(600)));
  assert.deepEqual(first, []);
  const second = framer.push(enc.encode('x'.repeat(600)));
  assert.equal(second.length, 1);
  assert.equal(second[0]?.kind, 'oversized');
  assert.deepEqual(framer.push(enc.encode('"}\n{"b":1}\n')), []);
});

test('a complete message larger than the cap in one chunk is oversized too', () => {
  const frames = frameAll(['{"a":"' + 'x'.repeat(2000) + '"}\n'], 1000);
  assert.equal(frames.length, 1);
  assert.equal(frames[0]?.kind, 'oversized');
});

test('whitespace between messages does not count against the cap', () => {
  const frames = frameAll([' '.repeat(5000) + '{"a":1}\n' + '\n'.repeat(5000)], 100);
  assert.deepEqual(texts(frames), ['{"a":1}']);
});

test('nesting deeper than the limit is invalid', () => {
  const framer = new JsonFramer({ maxMessageBytes: MiB, maxDepth: 4 });
  const frames = framer.push(enc.encode('[[[[[1]]]]]\n{"ok":1}\n'));
  assert.equal(frames[0]?.kind, 'invalid');
  assert.ok(frames.some((f) => f.kind === 'message' && f.text === '{"ok":1}'));
});

test('an unfinished object at end of stream is dropped', () => {
  assert.deepEqual(frameAll(['{"execute":"st']), []);
});

test('pendingBytes reports the message in progress and resets after it', () => {
  const framer = new JsonFramer({ maxMessageBytes: MiB });
  framer.push(enc.encode('{"a":'));
  assert.equal(framer.pendingBytes, 5);
  framer.push(enc.encode('1}'));
  assert.equal(framer.pendingBytes, 0);
});
