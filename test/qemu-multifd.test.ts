// Ferry's RAM next to QEMU 7.2's, both ways, over one connection and over multifd channels
// (uncompressed, zlib, zstd, and inside TLS sessions: Node's OpenSSL against QEMU's GnuTLS). A QEMU destination loads a stopped Ferry guest's RAM — paused
// before the switchover, QEMU's pmemsave equals Ferry's page for page — and then stops at
// Ferry's vCPU state (Ferry's devices are not QEMU's). And Ferry's receiver reads what a real
// QEMU source sent on its channels: every page lands where the stopped guest's own memory
// (QEMU's pmemsave) says it belongs.

import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { FerryProcess } from '../src/cli/ferry-process.js';
import { QmpClient } from '../src/qmp/client.js';
import { channelFromBytes } from '../src/stream/memory-channel.js';
import { MULTIFD_FLAG_SYNC, MULTIFD_INIT_BYTES, MULTIFD_PACKET_BYTES, decodeMultifdInit, decodeMultifdPacket } from '../src/stream/multifd.js';
import { MultifdReceiver } from '../src/migration/multifd-recv.js';
import { compressionFlag } from '../src/stream/multifd-compression.js';
import { clientExtensions, makeTestCert, makeTestCerts } from '../src/crypto/test-certs.js';
import { loadTlsCredsAnon, loadTlsCredsPsk, loadTlsCredsX509 } from '../src/crypto/tls-creds.js';
import { tlsServerChannel } from '../src/transport/tls.js';
import { socketChannel } from '../src/transport/socket.js';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const QEMU = 'qemu-system-x86_64';
const BOOTSECTOR = join(ROOT, 'dist', 'guests', 'sweep-bootsector.bin');
const QEMU_SKIP = spawnSync(QEMU, ['--version']).error ? `needs ${QEMU} (apt-get install qemu-system-x86)` : false;
/**
 * Where a QEMU destination stops loading a Ferry stream: at Ferry's vCPU state, the first
 * section after the header, the configuration, every pass of RAM and the global state that
 * QEMU cannot take (Ferry's "cpu" is its own description, not QEMU's version 11).
 */
const FERRY_CPU_REFUSED = /cpu: incoming version_id 1 is too old[^\n]*\n[^\n]*error while loading state for instance 0x0 of device 'cpu'/;
const PAGE = 4096;
const MULTIFD = [{ capability: 'multifd', state: true }];

function scratch(t: TestContext): string {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-qemu-multifd-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** A QEMU 7.2 process with a QMP socket; `stderr()` is what it said so far, `exited` once it is gone. */
function qemu(t: TestContext, dir: string, name: string, args: readonly string[]): { qmp: string; child: ChildProcess; stderr: () => string; exited: Promise<void> } {
  const qmp = join(dir, `${name}.qmp`);
  const child = spawn(QEMU, ['-accel', 'tcg', '-display', 'none', '-nodefaults', '-machine', 'pc,acpi=off', '-qmp', `unix:${qmp},server=on,wait=off`, ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.setEncoding('utf8').on('data', (s: string) => (stderr += s));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  t.after(() => child.kill('SIGKILL'));
  return { qmp, child, stderr: () => stderr, exited };
}

async function qmpOf(vm: { qmp: string; child: ChildProcess; stderr: () => string }): Promise<QmpClient> {
  const deadline = Date.now() + 30_000;
  for (;;) {
    try {
      return await QmpClient.connect(vm.qmp);
    } catch (err) {
      if (vm.child.exitCode !== null) assert.fail(`QEMU exited (${vm.child.exitCode}): ${vm.stderr()}`);
      if (Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

async function migrated(client: QmpClient): Promise<{ status: string; 'error-desc'?: string; ram?: { 'multifd-bytes': number } }> {
  const deadline = Date.now() + 120_000;
  for (;;) {
    const info = await client.execute<{ status: string; 'error-desc'?: string; ram?: { 'multifd-bytes': number } }>('query-migrate');
    if (info.status === 'completed' || info.status === 'failed' || info.status === 'cancelled') return info;
    if (Date.now() > deadline) assert.fail(`QEMU's migration did not end: ${JSON.stringify(info)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const COMPRESSIONS = ['none', 'zlib', 'zstd'] as const;
/** "", or ", pages compressed with zlib", or ", inside TLS sessions" — the test names' tails. */
const compressed = (c: (typeof COMPRESSIONS)[number] | 'tls' | 'psk' | 'anon'): string =>
  c === 'none' ? '' : c === 'tls' ? ', every one inside a TLS session (x509, each end verifying the other)' : c === 'psk' ? ', every one inside a TLS session keyed by a pre-shared key (tls-creds-psk)'
    : c === 'anon' ? ', every one inside an anonymous TLS session (tls-creds-anon: Diffie-Hellman, no certificates)' : `, pages compressed with ${c}`;

/** A keys.psk in its own directory, as QEMU's tls-creds-psk reads it (psktool's `name:hexkey`). */
function pskDir(dir: string, name: string, line: string): string {
  const d = join(dir, name);
  mkdirSync(d, { recursive: true });
  writeFileSync(join(d, 'keys.psk'), `${line}\n`);
  return d;
}
const PSK_LINE = `qemu:${'5a'.repeat(32)}`;

// 'single': no multifd, the RAM on the main stream alone — the same check for plain pre-copy.
// 'tls': uncompressed multifd, the main connection and each channel a TLS session.
for (const compression of ['single', ...COMPRESSIONS, 'tls', 'psk', 'anon'] as const) {
const multifd = compression !== 'single';
const tls = compression === 'tls' || compression === 'psk' || compression === 'anon';
const method = tls ? 'none' : compression;
test(`QEMU 7.2 loads a Ferry source's ${multifd ? `multifd channels${compressed(compression)}` : 'RAM over one connection (no multifd)'}: its RAM then holds the Ferry guest's, page for page`, { skip: QEMU_SKIP, timeout: 180_000 }, async (t) => {
  const dir = scratch(t);
  const sock = join(dir, 'mig.sock');
  const RAM = 64 * 1024 * 1024;
  const certs = compression === 'tls' ? makeTestCerts(join(dir, 'pki')) : undefined;
  const psk = compression === 'psk' ? pskDir(dir, 'psk', PSK_LINE) : undefined;
  const anon = compression === 'anon';
  const serverObject = certs ? `tls-creds-x509,id=tls0,dir=${certs.serverDir},endpoint=server,verify-peer=on` : psk ? `tls-creds-psk,id=tls0,dir=${psk},endpoint=server` : anon ? 'tls-creds-anon,id=tls0,endpoint=server' : undefined;
  const clientObject = certs ? `tls-creds-x509,id=tls0,dir=${certs.clientDir},endpoint=client` : psk ? `tls-creds-psk,id=tls0,dir=${psk},endpoint=client` : anon ? 'tls-creds-anon,id=tls0,endpoint=client' : undefined;
  // Ferry's sim machine has one RAM block, pc.ram, as QEMU's: QEMU needs the same size.
  const dest = qemu(t, dir, 'dst', ['-m', '64', '-incoming', 'defer', ...(serverObject ? ['-object', serverObject] : [])]);
  const dstQmp = await qmpOf(dest);
  t.after(() => dstQmp.close());
  if (multifd) {
    await dstQmp.execute('migrate-set-parameters', { 'multifd-channels': 3, 'multifd-compression': method });
    await dstQmp.execute('migrate-set-capabilities', { capabilities: MULTIFD });
  }
  if (tls) await dstQmp.execute('migrate-set-parameters', { 'tls-creds': 'tls0' });
  await dstQmp.execute('migrate-incoming', { uri: `unix:${sock}` });
  const source = await FerryProcess.start({ dir, name: 'src', args: ['--accel', 'sim', '-m', '64M', '--guest', 'builtin:sweep,rate=20000', ...(clientObject ? ['--object', clientObject] : [])], serial: 'null' });
  t.after(() => source.quit());
  // A guest that wrote RAM, then stopped: at the switchover QEMU must hold exactly that.
  const deadline = Date.now() + 30_000;
  while ((await source.execute<{ pass?: number }>('x-ferry-query-guest')).pass! < 1) {
    if (Date.now() > deadline) assert.fail('the sweep guest did not finish a pass');
    await new Promise((r) => setTimeout(r, 50));
  }
  await source.execute('stop');
  // A downtime limit of 1 ms: the source switches over only once (the guest stopped) nothing
  // is left, so that at the pause every page has gone — with the default 300 ms a slower
  // link (TLS) switched over with 31 MB still to send, which goes after the pause.
  await source.execute('migrate-set-parameters', { ...(multifd ? { 'multifd-channels': 3, 'multifd-compression': method } : {}), ...(tls ? { 'tls-creds': 'tls0', 'tls-hostname': 'localhost' } : {}), 'max-bandwidth': 0, 'downtime-limit': 1 });
  await source.execute('migrate-set-capabilities', { capabilities: [...(multifd ? MULTIFD : []), { capability: 'pause-before-switchover', state: true }] });
  await source.execute('migrate', { uri: `unix:${sock}` });
  // Paused before the device state: every page went, and QEMU — loading nothing until all
  // three channels are there, and at every EOS waiting for every channel's SYNC — took them.
  for (;;) {
    const info = await source.execute<{ status: string; 'error-desc'?: string }>('query-migrate');
    if (info.status === 'pre-switchover') break;
    assert.ok(info.status === 'setup' || info.status === 'active' || info.status === 'device', `the source's migration: ${JSON.stringify(info)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  const want = join(dir, 'ferry.bin');
  await source.execute('pmemsave', { val: 0, size: RAM, filename: want });
  const expected = readFileSync(want);
  // Between 640 KiB and 1 MiB QEMU shows VGA and ROMs rather than pc.ram.
  const differing = (got: Buffer): number[] => {
    const pages: number[] = [];
    for (let offset = 0; offset < RAM; offset += PAGE) {
      if (offset >= 0xa0000 && offset < 0x100000) continue;
      if (!got.subarray(offset, offset + PAGE).equals(expected.subarray(offset, offset + PAGE))) pages.push(offset);
    }
    return pages;
  };
  let data = 0;
  for (let offset = 0; offset < RAM; offset += PAGE) if (expected.subarray(offset, offset + PAGE).some((b) => b !== 0)) data++;
  assert.ok(data > 1000, `only ${data} pages of data: the guest did not write RAM`);
  // The last packets may still be on their way into QEMU's channel threads: look again for a while.
  const got = join(dir, 'qemu.bin');
  let wrong: number[] = [];
  for (const waitUntil = Date.now() + 20_000; ;) {
    await dstQmp.execute('pmemsave', { val: 0, size: RAM, filename: got });
    wrong = differing(readFileSync(got));
    if (wrong.length === 0 || Date.now() > waitUntil) break;
    await new Promise((r) => setTimeout(r, 250));
  }
  assert.deepEqual(wrong.slice(0, 8), [], `${wrong.length} pages differ in QEMU's RAM (the first offsets shown)`);
  t.diagnostic(`${data} pages of data, all in QEMU's RAM`);
  await source.execute('migrate-continue', { state: 'pre-switchover' });
  await dest.exited;
  const qemuErr = dest.stderr();
  // Then Ferry's devices, which are not QEMU's.
  assert.match(qemuErr, FERRY_CPU_REFUSED);
  assert.doesNotMatch(qemuErr, /multifd|RAM block|Unknown combination|TLS|handshake/i);
});
}

for (const mode of [...COMPRESSIONS, 'tls', 'psk', 'anon'] as const) {
const tls = mode === 'tls' || mode === 'psk' || mode === 'anon';
const compression = tls ? 'none' : mode;
test(`Ferry's multifd receiver reads a QEMU 7.2 source's channels: each page lands where the guest's own memory says it belongs${compressed(mode)}`, { skip: QEMU_SKIP, timeout: 180_000 }, async (t) => {
  const dir = scratch(t);
  const serial = join(dir, 'src.serial');
  const certs = mode === 'tls' ? makeTestCerts(join(dir, 'pki')) : undefined;
  const psk = mode === 'psk' ? pskDir(dir, 'psk', PSK_LINE) : undefined;
  const source = qemu(t, dir, 'src', ['-m', '32', '-serial', `file:${serial}`, '-drive', `file=${BOOTSECTOR},format=raw,if=ide`,
    ...(certs ? ['-object', `tls-creds-x509,id=tls0,dir=${certs.clientDir},endpoint=client`] : []),
    ...(psk ? ['-object', `tls-creds-psk,id=tls0,dir=${psk},endpoint=client`] : []),
    ...(mode === 'anon' ? ['-object', 'tls-creds-anon,id=tls0,endpoint=client'] : [])]);
  const client = await qmpOf(source);
  t.after(() => client.close());
  // Let the boot-sector guest write RAM for a while (a byte on the serial port per pass), then stop it: both saves see the same RAM.
  const deadline = Date.now() + 60_000;
  while (!existsSync(serial) || readFileSync(serial).length < 2) {
    if (Date.now() > deadline) assert.fail(`the QEMU guest did not start sweeping: ${source.stderr()}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  await client.execute('stop');
  const RAM = 32 * 1024 * 1024;

  // A destination that only records: the first connection is QEMU's main stream, every later
  // one a channel. With TLS, each is first a session with Ferry's TLS server (verifying QEMU's
  // client certificate), and what is recorded is the stream in clear.
  const sock = join(dir, 'record.sock');
  const recorded: Buffer[][] = [];
  const ended: Promise<void>[] = [];
  const serverCreds = certs ? loadTlsCredsX509('tls0', { dir: certs.serverDir, endpoint: 'server' }) : psk ? loadTlsCredsPsk('tls0', { dir: psk, endpoint: 'server' })
    : mode === 'anon' ? loadTlsCredsAnon('tls0', { endpoint: 'server' }) : undefined;
  const server = net.createServer((conn) => {
    const chunks: Buffer[] = [];
    recorded.push(chunks);
    if (serverCreds === undefined) {
      conn.on('data', (b: Buffer) => chunks.push(b));
      ended.push(new Promise((resolve) => conn.on('close', () => resolve())));
      return;
    }
    ended.push((async () => {
      const channel = await tlsServerChannel(socketChannel(conn, 'unix:record', {}), { role: 'server', creds: serverCreds });
      for (let chunk = await channel.read(); chunk !== null; chunk = await channel.read()) chunks.push(Buffer.from(chunk));
      channel.destroy();
    })().catch((err: unknown) => assert.fail(`the TLS session with QEMU: ${String(err)}`)));
  });
  await new Promise<void>((resolve) => server.listen(sock, resolve));
  t.after(() => server.close());
  await client.execute('migrate-set-parameters', { 'multifd-channels': 3, 'multifd-compression': compression, ...(tls ? { 'tls-creds': 'tls0', 'tls-hostname': 'localhost' } : {}) });
  await client.execute('migrate-set-capabilities', { capabilities: MULTIFD });
  await client.execute('migrate', { uri: `unix:${sock}` });
  const info = await migrated(client);
  assert.equal(info.status, 'completed', info['error-desc']);
  while (ended.length < 4) await new Promise((r) => setTimeout(r, 20));
  await Promise.all(ended);
  assert.equal(recorded.length, 4, 'the main stream and three channels');
  assert.equal(Buffer.concat(recorded[0]!).readUInt32BE(0), 0x5145564d, 'the first connection is the main stream ("QEVM")');
  const channels = recorded.slice(1).map((c) => new Uint8Array(Buffer.concat(c)));

  // The stopped guest's memory as QEMU itself reads it (guest-physical: pc.ram is at 0, the
  // 256 KiB BIOS, pc.bios, just below 4 GiB). Between 640 KiB and 1 MiB physical addresses
  // show VGA and ROMs rather than pc.ram: those pages are left out of the comparison.
  const physical = join(dir, 'physical.bin');
  const bios = join(dir, 'bios.bin');
  await client.execute('pmemsave', { val: 0, size: RAM, filename: physical });
  await client.execute('pmemsave', { val: 0x1_0000_0000 - 0x40000, size: 0x40000, filename: bios });
  const blocks = [
    { idstr: 'pc.ram', size: RAM, expected: new Uint8Array(readFileSync(physical)), compared: (offset: number) => offset < 0xa0000 || offset >= 0x100000 },
    { idstr: 'pc.bios', size: 0x40000, expected: new Uint8Array(readFileSync(bios)), compared: () => true },
    { idstr: 'pc.rom', size: 0x20000, expected: undefined, compared: () => false },
  ];
  const received = blocks.map((b) => ({ idstr: b.idstr, size: b.size, bytes: new Uint8Array(b.size) }));

  // How many SYNCs each channel carries: the receiver's syncMain() stands for the main stream's EOSes.
  // QEMU connects its channels from one thread each, so they may arrive in any order: each
  // says its number in its first packet, and the three numbers are 0, 1 and 2.
  const ids = channels.map((bytes, i) => decodeMultifdInit(bytes, new Uint8Array(16), 3, `channel ${i}`).id);
  assert.deepEqual([...ids].sort(), [0, 1, 2], `channel numbers in the order they connected: ${ids.join(', ')}`);
  let dataBytes = 0;
  let pageBytes = 0;
  const syncs = channels.map((bytes, i) => {
    let n = 0;
    for (let at = MULTIFD_INIT_BYTES; at < bytes.byteLength;) {
      const packet = decodeMultifdPacket(bytes.subarray(at, at + MULTIFD_PACKET_BYTES), at, `channel ${i}`, compressionFlag(compression));
      if ((packet.flags & MULTIFD_FLAG_SYNC) !== 0) n++;
      if (packet.normalPages > 0) {
        // QEMU's compressed packets say how many bytes follow; uncompressed ones, the pages.
        dataBytes += compression === 'none' ? packet.normalPages * PAGE : packet.nextPacketSize;
        pageBytes += packet.normalPages * PAGE;
      }
      at += MULTIFD_PACKET_BYTES + (packet.normalPages === 0 ? 0 : compression === 'none' ? packet.normalPages * PAGE : packet.nextPacketSize);
    }
    return n;
  });
  assert.ok(syncs.every((n) => n === syncs[0] && n >= 2), `SYNCs per channel: ${syncs.join(', ')}`);
  t.diagnostic(`QEMU sent ${pageBytes} bytes of pages as ${dataBytes} bytes`);
  if (compression !== 'none') assert.ok(dataBytes < pageBytes, 'QEMU compressed them');

  const landed = new Set<string>();
  const errors: Error[] = [];
  const receiver = new MultifdReceiver({
    channels: 3,
    uuid: new Uint8Array(16),
    compression,
    sink: {
      blocks: () => received,
      multifdPage: (b, offset) => {
        landed.add(`${b}:${offset}`);
        return received[b]!.bytes;
      },
    },
    onError: (err) => errors.push(err),
  });
  channels.forEach((bytes, i) => receiver.add(channelFromBytes(bytes, { chunkSize: 4000 + i * 1000, description: `recorded channel ${i}` })));
  for (let i = 0; i < syncs[0]!; i++) await receiver.syncMain();
  receiver.close();
  assert.deepEqual(errors, []);

  // Every page of data went on the channels (zero pages go on the main stream in 7.2), and
  // holds what the guest's memory says — the last copy, where QEMU sent one again (a few do
  // come twice, the guest stopped or not).
  assert.ok(receiver.pages >= landed.size);
  let nonZero = 0;
  for (const [b, block] of blocks.entries()) {
    if (block.expected === undefined) continue;
    for (let offset = 0; offset < block.size; offset += PAGE) {
      if (!block.compared(offset)) continue;
      const page = block.expected.subarray(offset, offset + PAGE);
      const got = received[b]!.bytes.subarray(offset, offset + PAGE);
      if (page.some((x) => x !== 0)) {
        nonZero++;
        assert.ok(landed.has(`${b}:${offset}`), `${block.idstr} page at ${offset} holds data but never came on a channel`);
      }
      assert.ok(Buffer.from(got).equals(Buffer.from(page)), `${block.idstr} page at ${offset} differs from the guest's memory`);
    }
  }
  assert.ok(nonZero > 1000, `only ${nonZero} pages of data: the guest did not write RAM`);
});
}

// tls-authz on a QEMU destination: QEMU matches its authz-simple identity against the name
// of the source's certificate as GnuTLS prints it — the same string Ferry's destination
// builds (transport/tls.ts distinguishedName), checked here against QEMU's own verdict.
test('QEMU 7.2 with tls-authz lets in a Ferry source whose certificate name is the identity, as Ferry writes that name, and denies it otherwise', { skip: QEMU_SKIP, timeout: 180_000 }, async (t) => {
  const dir = scratch(t);
  const certs = makeTestCerts(join(dir, 'pki'));
  const client = join(dir, 'two-part');
  mkdirSync(client);
  writeFileSync(join(client, 'ca-cert.pem'), readFileSync(join(certs.clientDir, 'ca-cert.pem')));
  makeTestCert(certs.ca, join(client, 'client-cert.pem'), join(client, 'client-key.pem'), { subject: 'Ferry client/O=Ferry Org', extensions: clientExtensions() });
  for (const [identity, allowed] of [['CN=Ferry client,O=Ferry Org', true], ['O=Ferry Org,CN=Ferry client', false]] as const) {
    const sock = join(dir, `authz-${allowed}.sock`);
    const dest = qemu(t, dir, `dst-authz-${allowed}`, ['-m', '32', '-incoming', 'defer']);
    const dstQmp = await qmpOf(dest);
    t.after(() => dstQmp.close());
    await dstQmp.execute('object-add', { 'qom-type': 'tls-creds-x509', id: 'tls0', dir: certs.serverDir, endpoint: 'server', 'verify-peer': true });
    await dstQmp.execute('object-add', { 'qom-type': 'authz-simple', id: 'auth0', identity });
    await dstQmp.execute('migrate-set-parameters', { 'tls-creds': 'tls0', 'tls-authz': 'auth0' });
    await dstQmp.execute('migrate-incoming', { uri: `unix:${sock}` });
    const source = await FerryProcess.start({ dir, name: `src-authz-${allowed}`, args: ['--accel', 'sim', '-m', '32M', '--no-warm-up', '--object', `tls-creds-x509,id=tls0,dir=${client}`], serial: 'null' });
    t.after(() => source.quit());
    await source.execute('stop');
    await source.execute('migrate-set-parameters', { 'tls-creds': 'tls0', 'tls-hostname': 'localhost', 'max-bandwidth': 0 });
    await source.execute('migrate', { uri: `unix:${sock}` });
    const info = await migrated(source.qmp);
    if (allowed) {
      assert.equal(info.status, 'completed', info['error-desc']);
      // In, and loaded up to Ferry's vCPU state (Ferry's devices are not QEMU's).
      await dest.exited;
      assert.match(dest.stderr(), FERRY_CPU_REFUSED);
    } else {
      assert.equal(info.status, 'failed');
      // QEMU reports the refused session and goes on waiting for another.
      const denied = /TLS x509 authz check for CN=Ferry client,O=Ferry Org is denied/;
      for (const until = Date.now() + 10_000; !denied.test(dest.stderr()) && Date.now() < until;) await new Promise((r) => setTimeout(r, 50));
      assert.match(dest.stderr(), denied);
      dest.child.kill('SIGKILL');
    }
  }
});
