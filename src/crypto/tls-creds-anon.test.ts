import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadTlsCredsAnon } from './tls-creds.js';

const root = mkdtempSync(join(tmpdir(), 'ferry-anon-'));
after(() => rmSync(root, { recursive: true, force: true }));

test('tls-creds-anon: nothing to load but a server\'s dh-params.pem, when its dir has one', () => {
  assert.deepEqual(loadTlsCredsAnon('a', {}), { type: 'tls-creds-anon', id: 'a', endpoint: 'client', dhParams: undefined });
  assert.equal(loadTlsCredsAnon('a', { endpoint: 'server', dir: root }).dhParams, undefined, 'a dir without the file: parameters made as needed');
  const dir = join(root, 'dh');
  mkdirSync(dir);
  // The smallest group openssl makes quickly; what matters here is the file's shape.
  execFileSync('openssl', ['dhparam', '-out', join(dir, 'dh-params.pem'), '512'], { stdio: 'ignore' });
  assert.match(loadTlsCredsAnon('a', { endpoint: 'server', dir }).dhParams?.toString() ?? '', /^-----BEGIN DH PARAMETERS-----/);
  assert.equal(loadTlsCredsAnon('a', { endpoint: 'client', dir }).dhParams, undefined, 'a client has no use for them');
});

test('tls-creds-anon: what QEMU refuses, in its words', () => {
  const bad = join(root, 'bad');
  mkdirSync(bad);
  writeFileSync(join(bad, 'dh-params.pem'), 'not parameters\n');
  assert.throws(() => loadTlsCredsAnon('a', { endpoint: 'server', dir: bad }), /Cannot load DH parameters from .*bad\/dh-params\.pem: not PEM-encoded DH parameters/);
  assert.throws(() => loadTlsCredsAnon('a', { 'sanity-check': true }), /Property 'tls-creds-anon.sanity-check' not found/);
  assert.throws(() => loadTlsCredsAnon('a', { username: 'qemu' }), /Property 'tls-creds-anon.username' not found/);
  assert.throws(() => loadTlsCredsAnon('a', { endpoint: 'both' }), /Parameter 'endpoint' does not accept value 'both'/);
  assert.throws(() => loadTlsCredsAnon('a', { priority: 'NORMAL' }), /Cannot use 'priority' for tls-creds-anon 'a'/);
});
