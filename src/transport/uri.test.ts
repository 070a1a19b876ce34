// QEMU's migration URI forms, their canonical text, and a message for each way to get one wrong.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ConfigError } from '../errors.js';
import { formatMigrationUri, parseMigrationUri } from './uri.js';

test('tcp: IPv4, host name, bracketed IPv6, empty host, and family options', () => {
  assert.deepEqual(parseMigrationUri('tcp:127.0.0.1:4444'), { kind: 'tcp', host: '127.0.0.1', port: 4444, family: undefined });
  assert.deepEqual(parseMigrationUri('tcp:dest.example:0'), { kind: 'tcp', host: 'dest.example', port: 0, family: undefined });
  assert.deepEqual(parseMigrationUri('tcp:[::1]:4444'), { kind: 'tcp', host: '::1', port: 4444, family: undefined });
  assert.deepEqual(parseMigrationUri('tcp:[fe80::1%eth0]:1'), { kind: 'tcp', host: 'fe80::1%eth0', port: 1, family: undefined });
  assert.deepEqual(parseMigrationUri('tcp::4444'), { kind: 'tcp', host: '', port: 4444, family: undefined });
  assert.deepEqual(parseMigrationUri('tcp:0:4444'), { kind: 'tcp', host: '0', port: 4444, family: undefined });
  assert.deepEqual(parseMigrationUri('tcp:localhost:5,ipv6'), { kind: 'tcp', host: 'localhost', port: 5, family: 6 });
  assert.deepEqual(parseMigrationUri('tcp:localhost:5,ipv4=on'), { kind: 'tcp', host: 'localhost', port: 5, family: 4 });
});

test('unix:, fd:N, fd:NAME and exec: keep what follows the scheme as written', () => {
  assert.deepEqual(parseMigrationUri('unix:/run/ferry/mig.sock'), { kind: 'unix', path: '/run/ferry/mig.sock' });
  assert.deepEqual(parseMigrationUri('unix:rel:with:colons'), { kind: 'unix', path: 'rel:with:colons' });
  assert.deepEqual(parseMigrationUri('fd:7'), { kind: 'fd', fd: 7 });
  assert.deepEqual(parseMigrationUri('fd:migfd'), { kind: 'fd-name', name: 'migfd' });
  assert.deepEqual(parseMigrationUri('exec:cat > /tmp/a:b'), { kind: 'exec', command: 'cat > /tmp/a:b' });
});

test('formatMigrationUri gives back the canonical text', () => {
  for (const uri of ['tcp:127.0.0.1:4444', 'tcp:[::1]:4444', 'tcp:h:1,ipv4', 'unix:/x.sock', 'fd:3', 'fd:name', 'exec:cat']) {
    assert.equal(formatMigrationUri(parseMigrationUri(uri)), uri);
  }
});

test('bad URIs are ConfigErrors that name what is wrong', () => {
  const cases: [string, RegExp][] = [
    ['', /expected tcp:HOST:PORT/],
    ['127.0.0.1:4444', /unknown transport "127.0.0.1"/],
    ['defer', /"defer" is not a transport/],
    ['rdma:1.2.3.4:5', /unknown transport "rdma"/],
    ['tcp:127.0.0.1', /port "0.0.1"|needs HOST:PORT/],
    ['tcp:4444', /needs HOST:PORT/],
    ['tcp:host:', /port "" is not a number/],
    ['tcp:host:http', /port "http" is not a number/],
    ['tcp:host:65536', /port 65536 is above 65535/],
    ['tcp:host:-1', /port "-1" is not a number/],
    ['tcp:::1:4444', /IPv6 address must be written in brackets/],
    ['tcp:[::1:4444', /"\[" of an IPv6 address is not closed/],
    ['tcp:[::1]4444', /expected ":PORT" after the IPv6 address \[::1\]/],
    ['tcp:[localhost]:1', /"localhost" in brackets is not an IPv6 address/],
    ['tcp:h:1,keep-alive', /unsupported tcp option "keep-alive"/],
    ['tcp:h:1,ipv4,ipv6', /ipv4 and ipv6 cannot both/],
    ['unix:', /unix: needs a socket path/],
    [`unix:/${'x'.repeat(200)}`, /longer than 107 bytes/],
    ['fd:', /fd: needs a descriptor number or a name/],
    ['fd:3x', /"3x" is not a file descriptor number/],
    ['fd:99999999999', /not a file descriptor number/],
    ['fd:a b', /"a b" is not a descriptor name/],
    ['exec:', /exec: needs a command/],
    ['exec:   ', /exec: needs a command/],
  ];
  for (const [uri, message] of cases) {
    assert.throws(
      () => parseMigrationUri(uri),
      (err: unknown) => err instanceof ConfigError && message.test(err.message) && err.message.includes(`"${uri}"`),
      `URI ${JSON.stringify(uri)} should fail with ${message}`,
    );
  }
});
