import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ConfigError } from '../errors.js';
import { formatQmpAddress, parseQmpAddress } from './address.js';

test('unix addresses: prefixed, bare, with QEMU server options', () => {
  assert.deepEqual(parseQmpAddress('unix:/tmp/a.sock'), { kind: 'unix', path: '/tmp/a.sock' });
  assert.deepEqual(parseQmpAddress('/tmp/a.sock'), { kind: 'unix', path: '/tmp/a.sock' });
  assert.deepEqual(parseQmpAddress('unix:/tmp/a.sock,server=on,wait=off'), { kind: 'unix', path: '/tmp/a.sock' });
  assert.deepEqual(parseQmpAddress('unix:/tmp/a.sock,server,nowait'), { kind: 'unix', path: '/tmp/a.sock' });
});

test('tcp addresses: IPv4, hostname, IPv6 in brackets, empty host', () => {
  assert.deepEqual(parseQmpAddress('tcp:127.0.0.1:4444'), { kind: 'tcp', host: '127.0.0.1', port: 4444 });
  assert.deepEqual(parseQmpAddress('tcp:localhost:0'), { kind: 'tcp', host: 'localhost', port: 0 });
  assert.deepEqual(parseQmpAddress('tcp:[::1]:4444'), { kind: 'tcp', host: '::1', port: 4444 });
  assert.deepEqual(parseQmpAddress('tcp::4444,server=on'), { kind: 'tcp', host: '0.0.0.0', port: 4444 });
});

test('bad addresses are ConfigErrors that quote the input', () => {
  for (const bad of ['tcp:host', 'tcp:::1:4444', 'tcp:h:65536', 'tcp:h:-1', 'unix:', '', 'unix:/a,foo=bar']) {
    assert.throws(() => parseQmpAddress(bad), (e: unknown) => e instanceof ConfigError && e.message.includes(`"${bad}"`), bad);
  }
});

test('format is the inverse of parse', () => {
  for (const text of ['unix:/tmp/x.sock', 'tcp:127.0.0.1:4444', 'tcp:[::1]:80']) {
    assert.equal(formatQmpAddress(parseQmpAddress(text)), text);
  }
});
