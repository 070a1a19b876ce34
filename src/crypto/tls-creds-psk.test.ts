import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadTlsCredsPsk } from './tls-creds.js';

const root = mkdtempSync(join(tmpdir(), 'ferry-psk-'));
after(() => rmSync(root, { recursive: true, force: true }));

function keysDir(name: string, text: string): string {
  const dir = join(root, name);
  mkdirSync(dir);
  writeFileSync(join(dir, 'keys.psk'), text);
  return dir;
}

const dir = keysDir('keys', 'qemu:00112233\nalice:a1b2c3d4e5f6\nqemu:ffff\n');

test('tls-creds-psk: a client holds its username\'s key (default "qemu", the first line for it); a server every key', () => {
  const client = loadTlsCredsPsk('p', { dir });
  assert.equal(client.endpoint, 'client');
  assert.equal(client.username, 'qemu');
  assert.deepEqual([...client.keys], [['qemu', Buffer.from('00112233', 'hex')]]);
  const alice = loadTlsCredsPsk('p', { dir, username: 'alice' });
  assert.deepEqual([...alice.keys], [['alice', Buffer.from('a1b2c3d4e5f6', 'hex')]]);
  const server = loadTlsCredsPsk('p', { dir, endpoint: 'server' });
  assert.equal(server.username, undefined);
  assert.deepEqual([...server.keys.keys()], ['qemu', 'alice']);
});

test('tls-creds-psk: what QEMU refuses, in its words; what it does not know, named', () => {
  assert.throws(() => loadTlsCredsPsk('p', {}), /^ConfigError: Missing 'dir' property value$/);
  assert.throws(() => loadTlsCredsPsk('p', { dir: join(root, 'nowhere') }), /Unable to access credentials .*nowhere\/keys\.psk: No such file or directory/);
  assert.throws(() => loadTlsCredsPsk('p', { dir, endpoint: 'server', username: 'qemu' }), /^ConfigError: username should not be set when endpoint=server$/);
  assert.throws(() => loadTlsCredsPsk('p', { dir, username: 'bob' }), /^ConfigError: Username bob not found in PSK file .*keys\/keys\.psk$/);
  assert.throws(() => loadTlsCredsPsk('p', { dir: keysDir('bad-hex', 'qemu:xyz\n') }), /Cannot set PSK client credentials: the key of 'qemu' \(line 1 of .*\) is not hex/);
  assert.throws(() => loadTlsCredsPsk('p', { dir, 'sanity-check': false }), /Property 'tls-creds-psk.sanity-check' not found/);
  assert.throws(() => loadTlsCredsPsk('p', { dir, bogus: 1 }), /Property 'tls-creds-psk.bogus' not found/);
  assert.throws(() => loadTlsCredsPsk('p', { dir, endpoint: 'both' }), /Parameter 'endpoint' does not accept value 'both'/);
});
