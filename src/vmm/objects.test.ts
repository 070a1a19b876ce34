import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ObjectRegistry, parseObjectOption } from './objects.js';
import { makeTestCerts } from '../crypto/test-certs.js';

const dir = mkdtempSync(join(tmpdir(), 'ferry-objects-'));
after(() => rmSync(dir, { recursive: true, force: true }));
const certs = makeTestCerts(dir);

test('-object: QEMU\'s TYPE,id=ID,key=value and qom-type=TYPE forms; values stay strings', () => {
  assert.deepEqual(parseObjectOption('tls-creds-x509,id=tls0,dir=/etc/pki/qemu,endpoint=server,verify-peer=off'), {
    type: 'tls-creds-x509', id: 'tls0', props: { dir: '/etc/pki/qemu', endpoint: 'server', 'verify-peer': 'off' },
  });
  assert.deepEqual(parseObjectOption('qom-type=tls-creds-x509,id=a,dir=/d'), { type: 'tls-creds-x509', id: 'a', props: { dir: '/d' } });
  // A doubled comma is a comma in the value, as in QEMU's.
  assert.deepEqual(parseObjectOption('authz-simple,id=auth0,identity=CN=Ferry client,,O=Ferry Org'), { type: 'authz-simple', id: 'auth0', props: { identity: 'CN=Ferry client,O=Ferry Org' } });
  assert.throws(() => parseObjectOption('tls-creds-x509,dir=/d'), /Invalid -object "tls-creds-x509,dir=\/d": Parameter 'id' is missing/);
  assert.throws(() => parseObjectOption('id=x,dir=/d'), /no type/);
  assert.throws(() => parseObjectOption('tls-creds-x509,id=x,oops'), /"oops" is not key=value/);
  assert.throws(() => parseObjectOption('tls-creds-x509,id=x,dir=/a,dir=/b'), /dir given twice/);
});

test('object registry: add, get, list and delete; every refusal changes nothing', () => {
  const objects = new ObjectRegistry();
  const made = objects.add('tls-creds-x509', 'tls0', { dir: certs.serverDir, endpoint: 'server' });
  assert.equal(made.type, 'tls-creds-x509');
  assert.equal(objects.get('tls0'), made);
  assert.throws(() => objects.add('tls-creds-x509', 'tls0', { dir: certs.clientDir }), /attempt to add duplicate property 'tls0' to object \(type 'container'\)/);
  assert.throws(() => objects.add('tls-creds-x509', '0bad', { dir: certs.clientDir }), /Parameter 'id' expects an identifier/);
  assert.throws(() => objects.add('no-such-type', 'x', {}), /Parameter 'qom-type' does not accept value 'no-such-type'/);
  assert.throws(() => objects.add('secret', 'x', {}), /Ferry does not create objects of type 'secret' \(it creates: tls-creds-x509, tls-creds-psk, tls-creds-anon, authz-simple, memory-backend-file, memory-backend-ram\)/);
  assert.equal(objects.add('authz-simple', 'auth0', { identity: 'CN=a' }).type, 'authz-simple');
  assert.throws(() => objects.add('authz-simple', 'auth1', {}), /The 'identity' property must be set/);
  assert.throws(() => objects.add('authz-simple', 'auth1', { identity: 'CN=a', rules: [] }), /Property 'authz-simple.rules' not found/);
  // A type's own refusal (a missing file) leaves no object behind.
  assert.throws(() => objects.add('tls-creds-x509', 'tls1', { dir: join(dir, 'nowhere') }), /Unable to access credentials .*nowhere\/ca-cert\.pem: No such file or directory/);
  assert.equal(objects.get('tls1'), undefined);
  assert.deepEqual(objects.list(), [{ id: 'tls0', type: 'tls-creds-x509' }, { id: 'auth0', type: 'authz-simple' }]);
  objects.delete('tls0');
  assert.equal(objects.get('tls0'), undefined);
  assert.throws(() => objects.delete('tls0'), /object 'tls0' not found/);
});

test('memory backends: memory-backend-file and memory-backend-ram with QEMU\'s properties and checks', () => {
  const objects = new ObjectRegistry();
  assert.deepEqual(objects.add('memory-backend-file', 'mem0', { size: '64M', 'mem-path': '/dev/shm/ferry-vm', share: 'on', prealloc: 'yes' }), {
    type: 'memory-backend-file', id: 'mem0', size: 64 * 1024 * 1024, memPath: '/dev/shm/ferry-vm', share: true, prealloc: true,
  });
  // From QMP the values are JSON: a number of bytes, booleans.
  assert.deepEqual(objects.add('memory-backend-file', 'mem1', { size: 8192, 'mem-path': '/tmp/f', share: false }), {
    type: 'memory-backend-file', id: 'mem1', size: 8192, memPath: '/tmp/f', share: false, prealloc: false,
  });
  assert.deepEqual(objects.add('memory-backend-ram', 'mem2', { size: '1G' }), { type: 'memory-backend-ram', id: 'mem2', size: 1024 ** 3, share: false, prealloc: false });
  assert.throws(() => objects.add('memory-backend-file', 'm', { 'mem-path': '/tmp/f' }), /^ConfigError: can't create backend with size 0$/);
  assert.throws(() => objects.add('memory-backend-file', 'm', { size: '4M' }), /mem-path property not set/);
  assert.throws(() => objects.add('memory-backend-file', 'm', { size: '4M', 'mem-path': '/f', share: 'maybe' }), /Parameter 'share' expects 'on' or 'off'/);
  assert.throws(() => objects.add('memory-backend-file', 'm', { size: '4M', 'mem-path': '/f', 'host-nodes': '0' }), /Ferry's memory-backend-file takes size, mem-path, share and prealloc, not 'host-nodes'/);
  assert.throws(() => objects.add('memory-backend-ram', 'm', { size: '4M', 'mem-path': '/f' }), /Ferry's memory-backend-ram takes size, share and prealloc, not 'mem-path'/);
  assert.throws(() => objects.add('memory-backend-ram', 'm', { size: '4M', share: 'on' }), /share=on would share anonymous memory no other process can map; use memory-backend-file/);
  assert.throws(() => objects.add('memory-backend-file', 'm', { size: '4097', 'mem-path': '/f' }), /size 4097 is not a multiple of 4 KiB/);
  assert.throws(() => objects.add('memory-backend-memfd', 'm', { size: '4M' }), /Ferry does not create objects of type 'memory-backend-memfd'/);
  assert.deepEqual(objects.list().map((o) => o.id), ['mem0', 'mem1', 'mem2']);
});
