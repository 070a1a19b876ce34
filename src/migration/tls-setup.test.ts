import { test } from 'node:test';
import assert from 'node:assert/strict';
import { DEFAULT_MIGRATION_PARAMETERS } from './parameters.js';
import { incomingTls, tlsHostname } from './tls-setup.js';

const params = (over: Record<string, string>) => ({ ...DEFAULT_MIGRATION_PARAMETERS, ...over });

test('tls-hostname, else a tcp: URI\'s host; none for unix:, fd:, exec:', () => {
  assert.equal(tlsHostname(params({}), 'tcp:dest.example:4444'), 'dest.example');
  assert.equal(tlsHostname(params({}), 'tcp:[::1]:4444'), '::1');
  assert.equal(tlsHostname(params({ 'tls-hostname': 'named.example' }), 'tcp:10.0.0.1:4444'), 'named.example');
  for (const uri of ['unix:/tmp/m.sock', 'fd:3', 'exec:cat']) assert.equal(tlsHostname(params({}), uri), undefined, uri);
  assert.equal(tlsHostname(params({ 'tls-hostname': 'h' }), 'unix:/tmp/m.sock'), 'h');
});

test('a destination\'s TLS: none without tls-creds; the objects named, or QEMU\'s words for what is wrong with them', () => {
  const x509 = { type: 'tls-creds-x509', id: 'tls0', endpoint: 'server', verifyPeer: true };
  const objects = new Map<string, { type: string }>([['tls0', x509], ['auth0', { type: 'authz-simple', identity: 'CN=src' } as { type: string }], ['other', { type: 'authz-simple' }]]);
  const find = (id: string) => objects.get(id);
  assert.equal(incomingTls(params({}), find), undefined);
  assert.deepEqual(incomingTls(params({ 'tls-creds': 'tls0' }), find), { role: 'server', creds: x509 });
  assert.deepEqual(incomingTls(params({ 'tls-creds': 'tls0', 'tls-authz': 'auth0' }), find), { role: 'server', creds: x509, authz: 'CN=src' });
  assert.throws(() => incomingTls(params({ 'tls-creds': 'nope' }), find), /^MigrationError: No TLS credentials with id 'nope'$/);
  assert.throws(() => incomingTls(params({ 'tls-creds': 'auth0' }), find), /^MigrationError: Object with id 'auth0' is not TLS credentials$/);
  assert.throws(() => incomingTls(params({ 'tls-creds': 'tls0', 'tls-authz': 'tls0' }), find), /^MigrationError: Object 'tls0' is not a QAuthZ subclass$/);
  assert.throws(() => incomingTls(params({ 'tls-authz': 'auth0' }), find), /needs tls-creds naming tls-creds-x509 credentials with verify-peer=on/);
});
