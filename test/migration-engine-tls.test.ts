// `tls-creds` between two fake VMs in one process: every connection of the migration — the
// main one and each multifd channel — is a TLS session (the source the client, the
// destination the server, QEMU 7.2's tls-creds-x509 files), nothing goes in clear, and
// every way the two ends can disagree fails both, in words that say why, with the source
// guest running and the destination never started.

import { test, after, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Channel } from '../src/transport/channel.js';
import { ObjectRegistry } from '../src/vmm/objects.js';
import { clientExtensions, makeTestCert, makeTestCerts } from '../src/crypto/test-certs.js';
import { digest, makeSide, memoryNetwork, statuses, type Side } from './migration-engine-helpers.js';

const MiB = 1024 * 1024;
const dir = mkdtempSync(join(tmpdir(), 'ferry-tls-engine-'));
after(() => rmSync(dir, { recursive: true, force: true }));
const certs = makeTestCerts(dir);
/** A client with the CA's certificate alone: it can check the destination, and has no certificate to show. */
const caOnlyDir = join(dir, 'ca-only');
mkdirSync(caOnlyDir);
copyFileSync(join(certs.clientDir, 'ca-cert.pem'), join(caOnlyDir, 'ca-cert.pem'));

/**
 * Connections through memory pairs; `wire` keeps the first bytes each connection carried
 * from the source (what a sniffer on the network would see).
 */
function network(): ReturnType<typeof memoryNetwork> & { wire: Uint8Array[] } {
  const wire: Uint8Array[] = [];
  const sniff = (near: Channel): Channel => {
    const index = wire.push(new Uint8Array(0)) - 1;
    return {
      ...near,
      description: near.description,
      read: () => near.read(),
      write: (data, done) => {
        if (wire[index]!.byteLength < 64) wire[index] = Buffer.concat([wire[index]!, data]).subarray(0, 64);
        return near.write(data, done);
      },
      end: () => near.end(),
      destroy: (error) => near.destroy(error),
    };
  };
  return { ...memoryNetwork({ address: 'tcp:127.0.0.1:4444', wrap: sniff }), wire };
}

/** A source and a destination, each with its own objects (as two processes would have). */
function pair(net: ReturnType<typeof network>, objects: { src: ObjectRegistry; dst: ObjectRegistry }): { src: Side; dst: Side } {
  const src = makeSide({ memorySize: 4 * MiB }, { connect: net.connect }, undefined, { findObject: (id) => objects.src.get(id) });
  const dst = makeSide({ memorySize: 4 * MiB, incoming: true }, { listen: net.listen }, undefined, { findObject: (id) => objects.dst.get(id), multifdConnectWaitMs: 3000 });
  for (const side of [src, dst]) side.migration.setCapabilities([{ capability: 'events', state: true }]);
  src.vm.fillPages(0, 512);
  return { src, dst };
}

function registries(client: Record<string, unknown> = {}, server: Record<string, unknown> = {}): { src: ObjectRegistry; dst: ObjectRegistry } {
  const src = new ObjectRegistry();
  const dst = new ObjectRegistry();
  src.add('tls-creds-x509', 'tls0', { dir: certs.clientDir, endpoint: 'client', ...client });
  dst.add('tls-creds-x509', 'tls0', { dir: certs.serverDir, endpoint: 'server', ...server });
  return { src, dst };
}

const URI = 'tcp:127.0.0.1:4444';
const QEVM = Buffer.from('QEVM');

async function settle(src: Side, dst: Side): Promise<void> {
  await src.migration.whenSettled();
  await dst.migration.whenIncomingSettled();
}

for (const channels of [0, 2]) {
  test(`tls-creds: a dirtying guest migrates${channels > 0 ? ` with ${channels} multifd channels` : ''}; every connection is a TLS session, none carries the stream in clear`, async (t) => {
    const net = network();
    const { src, dst } = pair(net, registries());
    src.vm.startWorkload(20, 1);
    t.after(() => src.vm.stopWorkload());
    for (const side of [src, dst]) {
      side.migration.setParameters({ 'tls-creds': 'tls0' });
      if (channels > 0) {
        side.migration.setParameters({ 'multifd-channels': channels });
        side.migration.setCapabilities([{ capability: 'multifd', state: true }]);
      }
    }
    src.migration.setParameters({ 'max-bandwidth': 0 });
    await dst.migration.migrateIncoming(URI);
    src.migration.migrate(URI);
    await settle(src, dst);
    const why = `source: ${src.migration.queryMigrate()['error-desc']}; destination: ${dst.migration.incomingError}`;
    assert.equal(src.migration.status, 'completed', why);
    assert.equal(dst.migration.incomingStatus, 'completed', why);
    src.vm.stopWorkload();
    assert.equal(digest(dst.vm.ram), digest(src.vm.ram), 'the destination\'s RAM is the source\'s');
    assert.equal(net.wire.length, 1 + channels, 'the main connection and each channel');
    for (const [i, bytes] of net.wire.entries()) {
      // A TLS handshake record (content type 22, version 3.x) opens every connection.
      assert.deepEqual([bytes[0], bytes[1]], [0x16, 0x03], `connection ${i} opens with a TLS handshake`);
      assert.equal(Buffer.from(bytes).indexOf(QEVM), -1, `connection ${i} does not show the stream's magic`);
    }
    assert.deepEqual(statuses(dst.events), ['setup', 'active', 'completed']);
  });
}

/** Both ends fail with errors matching `source` and `destination`; the source guest runs on, the destination never starts. */
async function bothFail(src: Side, dst: Side, source: RegExp, destination: RegExp | undefined): Promise<void> {
  await settle(src, dst);
  assert.equal(src.migration.status, 'failed');
  assert.match(src.migration.queryMigrate()['error-desc'] ?? '', source);
  assert.equal(src.vm.runState, 'running', 'the source guest runs on');
  if (destination) {
    assert.equal(dst.migration.incomingStatus, 'failed');
    assert.match(dst.migration.incomingError ?? '', destination);
  }
  assert.equal(dst.vm.runState, 'inmigrate', 'the destination never starts');
}

test('tls-creds: a destination without TLS and a source with it fail both, and nothing of the stream went in clear', async () => {
  const net = network();
  const { src, dst } = pair(net, registries());
  src.migration.setParameters({ 'tls-creds': 'tls0' });
  await dst.migration.migrateIncoming(URI);
  src.migration.migrate(URI);
  await bothFail(src, dst, /TLS handshake failed/, /.+/);
  assert.equal(Buffer.from(net.wire[0]!).indexOf(QEVM), -1);
});

test('tls-creds: a source without TLS and a destination with it fail both', async () => {
  const net = network();
  const { src, dst } = pair(net, registries());
  dst.migration.setParameters({ 'tls-creds': 'tls0' });
  await dst.migration.migrateIncoming(URI);
  src.migration.migrate(URI);
  await bothFail(src, dst, /.+/, /TLS handshake failed/);
});

test('tls-creds: a destination whose certificate does not carry the name asked for is refused by the source', async () => {
  const net = network();
  const { src, dst } = pair(net, registries());
  for (const side of [src, dst]) side.migration.setParameters({ 'tls-creds': 'tls0' });
  src.migration.setParameters({ 'tls-hostname': 'elsewhere.example' });
  await dst.migration.migrateIncoming(URI);
  src.migration.migrate(URI);
  await bothFail(src, dst, /TLS handshake failed on .*: Certificate does not match the hostname.*elsewhere\.example/, undefined);
});

test('tls-creds: a source whose certificate another CA signed, or that has none, is refused by a destination that verifies its peer', async () => {
  for (const client of [{ dir: certs.otherCaClientDir, 'verify-peer': false }, { dir: caOnlyDir }]) {
    const net = network();
    const { src, dst } = pair(net, registries(client));
    for (const side of [src, dst]) side.migration.setParameters({ 'tls-creds': 'tls0' });
    await dst.migration.migrateIncoming(URI);
    src.migration.migrate(URI);
    await bothFail(src, dst, /.+/, /TLS handshake failed/);
  }
});

test('tls-creds: with verify-peer off on the destination, a source with no certificate of its own migrates', async () => {
  const net = network();
  const { src, dst } = pair(net, registries({ dir: caOnlyDir }, { 'verify-peer': false }));
  for (const side of [src, dst]) side.migration.setParameters({ 'tls-creds': 'tls0' });
  await dst.migration.migrateIncoming(URI);
  src.migration.migrate(URI);
  await settle(src, dst);
  assert.equal(src.migration.status, 'completed', src.migration.queryMigrate()['error-desc']);
  assert.equal(digest(dst.vm.ram), digest(src.vm.ram));
});

test('tls-creds: credentials for the wrong end, a unix: URI with no tls-hostname, and a tls-authz naming no authz object are refused before anything connects, in QEMU\'s words', async () => {
  let connects = 0;
  let listens = 0;
  const objects = registries();
  const src = makeSide({ memorySize: 1 * MiB }, { connect: () => { connects++; return Promise.reject(new Error('unreachable')); } }, undefined, { findObject: (id) => objects.src.get(id) });
  const dst = makeSide({ memorySize: 1 * MiB, incoming: true }, { listen: () => { listens++; return Promise.reject(new Error('unreachable')); } }, undefined, { findObject: (id) => objects.dst.get(id) });
  // The server's credentials on the source, the client's on the destination.
  const swapped = { src: objects.dst, dst: objects.src };
  const srcSwapped = makeSide({ memorySize: 1 * MiB }, { connect: () => { connects++; return Promise.reject(new Error('unreachable')); } }, undefined, { findObject: (id) => swapped.src.get(id) });
  const dstSwapped = makeSide({ memorySize: 1 * MiB, incoming: true }, { listen: () => { listens++; return Promise.reject(new Error('unreachable')); } }, undefined, { findObject: (id) => swapped.dst.get(id) });
  for (const side of [src, dst, srcSwapped, dstSwapped]) side.migration.setParameters({ 'tls-creds': 'tls0' });
  assert.throws(() => srcSwapped.migration.migrate(URI), /^MigrationError: Expected TLS credentials for a client endpoint$/);
  await assert.rejects(dstSwapped.migration.migrateIncoming(URI), /^MigrationError: Expected TLS credentials for a server endpoint$/);
  assert.throws(() => src.migration.migrate('unix:/tmp/ferry-nowhere.sock'), /No hostname for certificate validation/);
  src.migration.setParameters({ 'tls-hostname': 'localhost' });
  dst.migration.setParameters({ 'tls-authz': 'auth0' });
  await assert.rejects(dst.migration.migrateIncoming(URI), /^MigrationError: Cannot find QAuthZ object ID auth0$/);
  assert.deepEqual([connects, listens], [0, 0]);
  for (const side of [src, srcSwapped]) assert.equal(side.migration.status, 'none');
  for (const side of [dst, dstSwapped]) assert.equal(side.migration.incomingStatus, 'none');
});

// tls-creds-psk: keys.psk at each end, as QEMU's (psktool writes `name:hexkey` lines).
const pskDir = (name: string, lines: string[]): string => {
  const d = join(dir, name);
  mkdirSync(d, { recursive: true });
  writeFileSync(join(d, 'keys.psk'), `${lines.join('\n')}\n`);
  return d;
};
const KEY = 'a1'.repeat(32);
const pskServer = pskDir('psk-server', ['other:' + 'b2'.repeat(32), `qemu:${KEY}`, `ferry:${'c3'.repeat(16)}`]);

function pskRegistries(client: Record<string, unknown>): { src: ObjectRegistry; dst: ObjectRegistry } {
  const src = new ObjectRegistry();
  const dst = new ObjectRegistry();
  src.add('tls-creds-psk', 'tls0', client);
  dst.add('tls-creds-psk', 'tls0', { dir: pskServer, endpoint: 'server' });
  return { src, dst };
}

/**
 * A dirtying guest migrated with 2 multifd channels to unix:/memory/tls (no hostname: only
 * x509 checks one), with `objects`' tls0 at each end: it completes with the same RAM, and
 * every connection opens with a TLS handshake record and never shows the stream.
 */
async function migrateWithChannels(t: TestContext, objects: { src: ObjectRegistry; dst: ObjectRegistry }): Promise<void> {
  const net = network();
  const { src, dst } = pair(net, objects);
  src.vm.startWorkload(20, 1);
  t.after(() => src.vm.stopWorkload());
  for (const side of [src, dst]) {
    side.migration.setParameters({ 'tls-creds': 'tls0', 'multifd-channels': 2 });
    side.migration.setCapabilities([{ capability: 'multifd', state: true }]);
  }
  src.migration.setParameters({ 'max-bandwidth': 0 });
  await dst.migration.migrateIncoming('unix:/memory/tls');
  src.migration.migrate('unix:/memory/tls');
  await settle(src, dst);
  const why = `source: ${src.migration.queryMigrate()['error-desc']}; destination: ${dst.migration.incomingError}`;
  assert.equal(src.migration.status, 'completed', why);
  assert.equal(dst.migration.incomingStatus, 'completed', why);
  src.vm.stopWorkload();
  assert.equal(digest(dst.vm.ram), digest(src.vm.ram));
  assert.equal(net.wire.length, 3, 'the main connection and two channels');
  for (const bytes of net.wire) {
    assert.deepEqual([bytes[0], bytes[1]], [0x16, 0x03]);
    assert.equal(Buffer.from(bytes).indexOf(QEVM), -1);
  }
}

test('tls-creds-psk: a dirtying guest migrates with 2 multifd channels over sessions keyed by a pre-shared key (the default username, and another)', async (t) => {
  for (const client of [{ dir: pskDir('psk-client', [`qemu:${KEY}`]) }, { dir: pskDir('psk-client-ferry', [`ferry:${'c3'.repeat(16)}`]), username: 'ferry' }]) {
    await migrateWithChannels(t, pskRegistries(client));
  }
});

test('tls-creds-psk: a source whose key differs from the destination\'s, or whose name it does not know, fails both ends', async () => {
  for (const client of [{ dir: pskDir('psk-wrong-key', [`qemu:${'d4'.repeat(32)}`]) }, { dir: pskDir('psk-unknown', [`stranger:${KEY}`]), username: 'stranger' }]) {
    const net = network();
    const { src, dst } = pair(net, pskRegistries(client));
    for (const side of [src, dst]) side.migration.setParameters({ 'tls-creds': 'tls0' });
    await dst.migration.migrateIncoming(URI);
    src.migration.migrate(URI);
    await bothFail(src, dst, /TLS handshake failed/, /TLS handshake failed/);
  }
});

// tls-authz: an authz-simple object's identity, matched against the source certificate's name
// as QEMU's GnuTLS gives it (the certificate's order), which QEMU's users write.
test('tls-authz: the source whose certificate carries the identity is let in; any other is refused at the handshake; tls-authz without certificates to check is refused', async () => {
  // A client certificate of two attributes, CN first in the certificate: "CN=…,O=…" as GnuTLS prints it.
  const twoPart = join(dir, 'two-part-client');
  mkdirSync(twoPart);
  copyFileSync(join(certs.clientDir, 'ca-cert.pem'), join(twoPart, 'ca-cert.pem'));
  makeTestCert(certs.ca, join(twoPart, 'client-cert.pem'), join(twoPart, 'client-key.pem'), { subject: 'Ferry client/O=Ferry Org', extensions: clientExtensions() });
  for (const [identity, allowed] of [['CN=Ferry client,O=Ferry Org', true], ['O=Ferry Org,CN=Ferry client', false], ['CN=someone else', false]] as const) {
    const net = network();
    const objects = registries({ dir: twoPart });
    objects.dst.add('authz-simple', 'auth0', { identity });
    const { src, dst } = pair(net, objects);
    for (const side of [src, dst]) side.migration.setParameters({ 'tls-creds': 'tls0' });
    dst.migration.setParameters({ 'tls-authz': 'auth0' });
    await dst.migration.migrateIncoming(URI);
    src.migration.migrate(URI);
    if (allowed) {
      await settle(src, dst);
      assert.equal(src.migration.status, 'completed', src.migration.queryMigrate()['error-desc']);
      assert.equal(digest(dst.vm.ram), digest(src.vm.ram));
    } else {
      await bothFail(src, dst, /.+/, /TLS handshake failed on .*: TLS x509 authz check for CN=Ferry client,O=Ferry Org is denied/);
    }
  }
  // With certificates not checked (verify-peer off), or pre-shared keys, there is no name to check.
  for (const [objects, what] of [[registries({}, { 'verify-peer': false }), 'verify-peer off'], [pskRegistries({ dir: pskServer, endpoint: 'client' }), 'psk']] as const) {
    objects.dst.add('authz-simple', 'auth0', { identity: 'CN=x' });
    const { dst } = pair(network(), objects);
    dst.migration.setParameters({ 'tls-creds': 'tls0', 'tls-authz': 'auth0' });
    await assert.rejects(dst.migration.migrateIncoming(URI), /tls-authz 'auth0' checks the name in a source's certificate: it needs tls-creds naming tls-creds-x509 credentials with verify-peer=on/, what);
    assert.equal(dst.migration.incomingStatus, 'none');
  }
  // An object that is not an authz object.
  const objects = registries();
  const { dst } = pair(network(), objects);
  dst.migration.setParameters({ 'tls-creds': 'tls0', 'tls-authz': 'tls0' });
  await assert.rejects(dst.migration.migrateIncoming(URI), /^MigrationError: Object 'tls0' is not a QAuthZ subclass$/);
});

// tls-creds-anon: anonymous Diffie-Hellman, encrypted and authenticated by nothing.
test('tls-creds-anon: a dirtying guest migrates with 2 multifd channels over anonymous sessions; anon against x509 fails both ends; tls-authz is refused', async (t) => {
  const anon = { src: new ObjectRegistry(), dst: new ObjectRegistry() };
  anon.src.add('tls-creds-anon', 'tls0', { endpoint: 'client' });
  anon.dst.add('tls-creds-anon', 'tls0', { endpoint: 'server' });
  await migrateWithChannels(t, anon);

  // A source with anonymous credentials and a destination with a certificate share no suite.
  const mixed = { src: anon.src, dst: registries().dst };
  const net2 = network();
  const sides = pair(net2, mixed);
  for (const side of [sides.src, sides.dst]) side.migration.setParameters({ 'tls-creds': 'tls0' });
  await sides.dst.migration.migrateIncoming(URI);
  sides.src.migration.migrate(URI);
  await bothFail(sides.src, sides.dst, /TLS handshake failed/, /TLS handshake failed/);

  anon.dst.add('authz-simple', 'auth0', { identity: 'CN=anyone' });
  const guarded = pair(network(), anon).dst;
  guarded.migration.setParameters({ 'tls-creds': 'tls0', 'tls-authz': 'auth0' });
  await assert.rejects(guarded.migration.migrateIncoming(URI), /tls-authz 'auth0' checks the name in a source's certificate: it needs tls-creds naming tls-creds-x509 credentials with verify-peer=on/);
});
