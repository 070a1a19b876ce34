// Post-copy between two real Ferry processes: the guest runs on the destination while
// the rest of its RAM arrives, the pages it touches first asked for over the return path.
// Afterwards the guest's memory holds together (its sweep counters), it goes on there, and
// — for a guest that stays paused — the destination's RAM is the source's, byte for byte.
// And the ways it can go wrong: a destination that cannot, a transport without a way back,
// a destination lost after the switch (the source keeps the guest, stopped, whole).

import { test } from 'node:test';
import type { TestContext } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { FerryProcess } from '../src/cli/ferry-process.js';
import { kvmAvailable } from '../src/hypervisor/kvm-accelerator.js';
import { runFerry, scratch, started, waitFor, waitMigration } from './e2e-helpers.js';
import { makeTestCerts } from '../src/crypto/test-certs.js';

interface Guest { pass: number }
interface Check { ok: boolean; pass: number; problem?: string }
interface Info {
  status: string;
  'error-desc'?: string;
  downtime?: number;
  ram?: { 'postcopy-requests': number; 'postcopy-bytes': number; 'precopy-bytes': number; remaining: number; 'dirty-sync-count': number };
  'postcopy-blocktime'?: number;
  'postcopy-vcpu-blocktime'?: number[];
}

const MiB = 1024 * 1024;
/** A guest sweeping its 32 MiB fast enough that it never converges under a cap of 8 MiB/s. */
const GUEST = ['--accel', 'sim', '-m', '32M', '--guest', 'builtin:sweep,rate=20000'];
const POSTCOPY = { capabilities: [{ capability: 'postcopy-ram', state: true }] };

async function status(vm: FerryProcess): Promise<string> {
  return (await vm.execute<{ status: string }>('query-status')).status;
}

/** A destination started with --incoming defer: postcopy-ram on, then listening on a loopback tcp port; its URI. */
async function listening(dest: FerryProcess): Promise<string> {
  await dest.execute('migrate-set-capabilities', POSTCOPY);
  await dest.execute('migrate-incoming', { uri: 'tcp:127.0.0.1:0' });
  const info = await dest.execute<{ 'socket-address'?: Array<{ host: string; port: string }> }>('query-migrate');
  const address = info['socket-address']?.[0];
  assert.ok(address, JSON.stringify(info));
  return `tcp:${address.host}:${address.port}`;
}

async function passOf(vm: FerryProcess): Promise<number> {
  return (await vm.execute<Guest>('x-ferry-query-guest')).pass;
}

test('sim: post-copy over unix (ferry migrate --postcopy --dest-qmp): the guest runs on the destination while its RAM arrives, the pages it touches asked for first', async (t) => {
  const dir = scratch(t);
  const path = join(dir, 'migration.sock');
  const dest = await started(t, dir, 'dst', [...GUEST, '--incoming', `unix:${path}`], { NODE_DEBUG: 'ferry' });
  const source = await started(t, dir, 'src', GUEST, { NODE_DEBUG: 'ferry' });
  await dest.incomingAddress();
  // Every page written (zero pages would go as a few bytes each), and post-copy slow enough
  // that the guest runs on the destination for a second or two with pages missing.
  await waitFor(async () => (await passOf(source)) >= 2, 'two passes of the guest over its RAM');
  await source.execute('migrate-set-parameters', { 'max-postcopy-bandwidth': 16 * MiB });
  const before = await passOf(source);
  const { code, stdout, stderr } = await runFerry(['migrate', '--qmp', source.qmpPath, `unix:${path}`, '--max-bandwidth', '8M', '--no-progress', '--postcopy', '--dest-qmp', dest.qmpPath]);
  assert.equal(code, 0, stderr + stdout);
  assert.match(stdout, /Migration completed/);
  assert.match(stdout, /post-copy +[\d.]+ [KMG]?i?B sent after the switch, \d+ page requests from the destination/);
  assert.match(stdout, /vCPUs blocked +\d+ ms on pages not there yet, all at once \d+ ms/);
  const info = await source.execute<Info>('query-migrate');
  assert.equal(info.status, 'completed');
  assert.ok(info.ram!['postcopy-requests'] > 0, `the destination asked for no page: ${JSON.stringify(info.ram)}`);
  assert.ok(info.ram!['postcopy-bytes'] > 16 * MiB, `most of RAM went after the switch: ${JSON.stringify(info.ram)}`);
  assert.ok(info.downtime !== undefined && info.downtime < 300, `downtime ${info.downtime} ms`);
  assert.equal(await status(source), 'postmigrate');
  // The destination completes once it has told the source and let go of its RAM's registration.
  await waitFor(async () => (await dest.execute<Info>('query-migrate')).status === 'completed', 'the destination to complete');
  assert.equal(await status(dest), 'running');
  // The destination ran the guest before its RAM was all there, and says so.
  const ran = /the guest ran ([\d.]+) ms before the last page arrived \((\d+) pages to come at the switch, (\d+) asked for by faults/.exec(dest.stderr);
  assert.ok(ran, dest.stderr);
  assert.ok(Number(ran[1]) > 500 && Number(ran[3]) > 0, ran[0]);
  // postcopy-blocktime (ferry migrate --postcopy turned it on there): the guest's one vCPU
  // (the sim's workload thread) waited on the pages it asked for.
  const blocktime = await dest.execute<Info>('query-migrate');
  assert.equal(blocktime['postcopy-vcpu-blocktime']?.length, 1, JSON.stringify(blocktime));
  assert.ok(blocktime['postcopy-vcpu-blocktime'][0]! > 0, JSON.stringify(blocktime));
  assert.ok(Math.abs(blocktime['postcopy-blocktime']! - blocktime['postcopy-vcpu-blocktime'][0]!) <= 1, JSON.stringify(blocktime));
  assert.match(await dest.execute<string>('human-monitor-command', { 'command-line': 'info migrate' }), /\npostcopy blocktime: \d+\r?\npostcopy vcpu blocktime: \d+\r?\n/);
  assert.match(dest.stderr, /post-copy done here: .*; vCPUs blocked \d+ ms, all at once \d+ ms/);
  assert.equal(info['postcopy-blocktime'], undefined, 'the source measures no blocktime');
  // Its memory holds together, and it goes on.
  const start = await passOf(dest);
  assert.ok(start >= before, `pass ${start} on the destination, ${before} on the source before`);
  await waitFor(async () => (await passOf(dest)) > start, 'the pass counter to move on the destination');
  await dest.execute('stop');
  const check = await dest.execute<Check>('x-ferry-check-memory');
  assert.ok(check.ok, check.problem);
});

test('sim: release-ram (ferry migrate --postcopy --release-ram): the source gives its guest\'s RAM back as post-copy sends it, and refuses to run the guest after', async (t) => {
  const dir = scratch(t);
  // 256 MiB, all written: what the source gives back shows in its resident memory.
  const guest = ['--accel', 'sim', '-m', '256M', '--guest', 'builtin:sweep,rate=200000'];
  const dest = await started(t, dir, 'dst', [...guest, '--incoming', 'defer'], { NODE_DEBUG: 'ferry' });
  const source = await started(t, dir, 'src', guest, { NODE_DEBUG: 'ferry' });
  const uri = await listening(dest);
  await waitFor(async () => (await passOf(source)) >= 1, 'the guest to write all of its RAM');
  const resident = (): number => Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${source.child.pid}/status`, 'utf8'))![1]) * 1024;
  const before = resident();
  const { code, stdout, stderr } = await runFerry(['migrate', '--qmp', source.qmpPath, uri, '--max-bandwidth', '64M', '--no-progress', '--postcopy', '--release-ram', '--dest-qmp', dest.qmpPath]);
  assert.equal(code, 0, stderr + stdout);
  assert.match(stdout, /Migration completed/);
  const after = resident();
  t.diagnostic(`source resident ${(before / MiB).toFixed(0)} MiB before, ${(after / MiB).toFixed(0)} MiB after`);
  assert.ok(before - after > 200 * MiB, `the source kept its RAM: ${(before / MiB).toFixed(0)} MiB resident before, ${(after / MiB).toFixed(0)} MiB after`);
  assert.match(source.stderr, /migration: completed in post-copy/);
  // The guest's RAM is gone here: cont must not run what is left of it.
  await assert.rejects(source.execute('cont'), /given back to the host as post-copy sent it \(release-ram\): it cannot run here again/);
  assert.equal(await status(source), 'postmigrate');
  await waitFor(async () => (await dest.execute<Info>('query-migrate')).status === 'completed', 'the destination to complete');
  await dest.execute('stop');
  const check = await dest.execute<Check>('x-ferry-check-memory');
  assert.ok(check.ok, check.problem);
});

test('sim: post-copy of a paused guest over tcp: it stays paused, and the destination\'s RAM and CPU state are the source\'s, byte for byte', async (t) => {
  const dir = scratch(t);
  const dest = await started(t, dir, 'dst', [...GUEST, '--incoming', 'defer']);
  const source = await started(t, dir, 'src', GUEST);
  const address = await listening(dest);
  await waitFor(async () => (await passOf(source)) >= 1, 'a first pass of the guest');
  await source.execute('stop');
  await source.execute('migrate-set-capabilities', { capabilities: [{ capability: 'postcopy-ram', state: true }, { capability: 'events', state: true }] });
  // Pre-copy capped low, so that the switch comes with most of RAM still to send.
  await source.execute('migrate-set-parameters', { 'max-bandwidth': 4 * MiB, 'max-postcopy-bandwidth': 64 * MiB });
  await source.execute('migrate', { uri: address });
  await source.execute('migrate-start-postcopy');
  const info = await waitMigration(source, (i) => i.status === 'completed' || i.status === 'failed') as unknown as Info;
  assert.equal(info.status, 'completed', info['error-desc']);
  const done = await source.execute<Info>('query-migrate');
  assert.ok(done.ram!['postcopy-bytes'] > 0 && done.ram!['postcopy-bytes'] >= done.ram!['precopy-bytes'], JSON.stringify(done.ram));
  await waitFor(async () => (await dest.execute<Info>('query-migrate')).status === 'completed', 'the destination to complete');
  assert.equal(await status(dest), 'paused');
  const [srcDigest, dstDigest] = await Promise.all([source.execute('x-ferry-ram-digest'), dest.execute('x-ferry-ram-digest')]);
  assert.deepEqual(dstDigest, srcDigest, 'RAM digest differs between source and destination');
  assert.deepEqual(await dest.execute('x-ferry-query-state'), await source.execute('x-ferry-query-state'));
  const check = await dest.execute<Check>('x-ferry-check-memory');
  assert.ok(check.ok, check.problem);
  await dest.execute('cont');
  await waitFor(async () => (await passOf(dest)) > check.pass, 'the pass counter to move on the destination');
});

test('sim: a destination lost after the switch to post-copy: the source pauses with its guest stopped and whole; migrate_cancel gives up, and cont runs the guest there', async (t) => {
  const dir = scratch(t);
  const dest = await started(t, dir, 'dst', [...GUEST, '--incoming', 'defer']);
  const source = await started(t, dir, 'src', GUEST, { NODE_DEBUG: 'ferry' });
  const uri = await listening(dest);
  await source.execute('migrate-set-capabilities', POSTCOPY);
  await source.execute('migrate-set-parameters', { 'max-bandwidth': 8 * MiB, 'max-postcopy-bandwidth': MiB });
  await source.execute('migrate', { uri });
  await waitMigration(source, (i) => i.status === 'active');
  await source.execute('migrate-start-postcopy');
  await waitMigration(source, (i) => i.status === 'postcopy-active');
  await waitFor(async () => (await dest.execute<Info>('query-migrate')).status === 'postcopy-active', 'the destination to run the guest');
  // A cancel now would leave no whole guest anywhere: it changes nothing.
  await source.execute('migrate_cancel');
  assert.equal((await source.execute<Info>('query-migrate')).status, 'postcopy-active');
  dest.kill();
  // As QEMU: paused, waiting for a new connection (migrate with resume) that could go on.
  await waitMigration(source, (i) => i.status === 'postcopy-paused', 20_000);
  assert.equal(await status(source), 'finish-migrate');
  assert.match(source.stderr, /post-copy paused: .*migrate-recover on the destination, then migrate with resume here, goes on/);
  // No destination will come back: give up.
  await source.execute('migrate_cancel');
  const failed = await waitMigration(source, (i) => i.status === 'failed', 20_000) as unknown as Info;
  assert.match(failed['error-desc'] ?? '', /migrate_cancel while post-copy was paused — after the switch to post-copy: the guest is stopped here with all of its state, and may be running on the destination; if it is not, 'cont' runs it here/);
  assert.equal(await status(source), 'paused');
  const check = await source.execute<Check>('x-ferry-check-memory');
  assert.ok(check.ok, check.problem);
  await source.execute('cont');
  await waitFor(async () => (await passOf(source)) > check.pass, 'the pass counter to move on the source');
});

test('sim: with release-ram, a destination lost after the switch leaves nothing to recover: migrate with resume is refused in QEMU\'s words, and cont after the cancel', async (t) => {
  const dir = scratch(t);
  const dest = await started(t, dir, 'dst', [...GUEST, '--incoming', 'defer']);
  const source = await started(t, dir, 'src', GUEST);
  const uri = await listening(dest);
  await source.execute('migrate-set-capabilities', { capabilities: [...POSTCOPY.capabilities, { capability: 'release-ram', state: true }] });
  await source.execute('migrate-set-parameters', { 'max-bandwidth': 8 * MiB, 'max-postcopy-bandwidth': MiB });
  await source.execute('migrate', { uri });
  await waitMigration(source, (i) => i.status === 'active');
  await source.execute('migrate-start-postcopy');
  await waitFor(async () => (await dest.execute<Info>('query-migrate')).status === 'postcopy-active', 'the destination to run the guest');
  dest.kill();
  await waitMigration(source, (i) => i.status === 'postcopy-paused', 20_000);
  await assert.rejects(source.execute('migrate', { uri, resume: true }), /^.*Postcopy recovery cannot work when release-ram capability is set$/);
  await source.execute('migrate_cancel');
  const failed = await waitMigration(source, (i) => i.status === 'failed', 20_000) as unknown as Info;
  assert.match(failed['error-desc'] ?? '', /with release-ram: the guest's RAM here was given back as it went, so it cannot run here again/);
  await assert.rejects(source.execute('cont'), /it cannot run here again/);
  assert.equal(await status(source), 'paused');
});

test('sim: a source lost after the switch to post-copy: the destination pauses, its guest waiting for the missing pages; what reads guest RAM is refused, and quit ends it at once', async (t) => {
  const dir = scratch(t);
  const dest = await started(t, dir, 'dst', [...GUEST, '--incoming', 'defer'], { NODE_DEBUG: 'ferry' });
  const source = await started(t, dir, 'src', GUEST);
  const uri = await listening(dest);
  await waitFor(async () => (await passOf(source)) >= 2, 'two passes of the guest over its RAM');
  await source.execute('migrate-set-capabilities', POSTCOPY);
  await source.execute('migrate-set-parameters', { 'max-bandwidth': 8 * MiB, 'max-postcopy-bandwidth': MiB });
  await source.execute('migrate', { uri });
  await source.execute('migrate-start-postcopy');
  await waitFor(async () => (await dest.execute<Info>('query-migrate')).status === 'postcopy-active', 'the destination to run the guest');
  // RAM still arrives: what reads it from the VMM's thread is refused, not left to hang.
  await assert.rejects(dest.execute('x-ferry-query-guest'), /Guest RAM is still arriving \(post-copy\)/);
  source.kill();
  // As QEMU: paused until a source resumes (migrate-recover), the guest on what it has.
  await waitFor(async () => (await dest.execute<Info>('query-migrate')).status === 'postcopy-paused', 'the destination to pause');
  assert.match(dest.stderr, /post-copy paused: .*; \d+ pages still to come/);
  await assert.rejects(dest.execute('x-ferry-ram-digest'), /Stop the guest first|Guest RAM is still arriving/);
  await assert.rejects(dest.execute('x-ferry-query-guest'), /Guest RAM is still arriving \(post-copy\)/);
  // A vCPU asleep on a missing page cannot be stopped; quit still ends the process, at once.
  const quitAt = Date.now();
  await dest.execute('quit').catch(() => {});
  assert.equal(await dest.exited, 0);
  assert.ok(Date.now() - quitAt < 5000, `quit took ${Date.now() - quitAt} ms`);
});

/**
 * Post-copy broken mid-way — by `how`: the connection cut at a relay, or QMP migrate-pause
 * on either side — both sides pause; migrate-recover and migrate with resume go on from
 * what arrived, and the guest is whole. The destination measures postcopy-blocktime: its
 * vCPU waits on missing pages while paused, and the figure grows.
 */
async function recoverAfter(t: TestContext, how: 'cut' | 'pause-source' | 'pause-destination', tls = false): Promise<void> {
  const dir = scratch(t);
  // With TLS, every connection — the first, and the one recovery opens — is a TLS session,
  // and the return path runs inside the first.
  const certs = tls ? makeTestCerts(join(dir, 'pki')) : undefined;
  const dest = await started(t, dir, 'dst', [...GUEST, '--incoming', 'defer', ...(certs ? ['--object', `tls-creds-x509,id=tls0,dir=${certs.serverDir},endpoint=server`] : [])], { NODE_DEBUG: 'ferry' });
  const source = await started(t, dir, 'src', [...GUEST, ...(certs ? ['--object', `tls-creds-x509,id=tls0,dir=${certs.clientDir},endpoint=client`] : [])], { NODE_DEBUG: 'ferry' });
  if (certs) for (const side of [source, dest]) await side.execute('migrate-set-parameters', { 'tls-creds': 'tls0' });
  await dest.execute('migrate-set-capabilities', { capabilities: [{ capability: 'postcopy-blocktime', state: true }] });
  const target = await listening(dest);
  // The connection runs through a relay here, so that the test can cut it. A side that
  // goes (a reset, as a socket closed with unread bytes sends) takes the other with it.
  const [host, port] = target.slice('tcp:'.length).split(':') as [string, string];
  const sockets: net.Socket[] = [];
  const relay = net.createServer((client) => {
    const upstream = net.connect(Number(port), host);
    client.pipe(upstream).on('error', () => {});
    upstream.pipe(client).on('error', () => {});
    client.on('error', () => {});
    upstream.on('error', () => {});
    client.on('close', () => upstream.destroy());
    upstream.on('close', () => client.destroy());
    sockets.push(client, upstream);
  });
  await new Promise<void>((resolve) => relay.listen(0, '127.0.0.1', resolve));
  t.after(() => relay.close());
  const relayPort = (relay.address() as net.AddressInfo).port;
  await waitFor(async () => (await passOf(source)) >= 2, 'two passes of the guest over its RAM');
  await source.execute('migrate-set-capabilities', POSTCOPY);
  await source.execute('migrate-set-parameters', { 'max-bandwidth': 8 * MiB, 'max-postcopy-bandwidth': 4 * MiB });
  await assert.rejects(source.execute('migrate-pause'), /migrate-pause is currently only supported during postcopy-active state/);
  await source.execute('migrate', { uri: `tcp:127.0.0.1:${relayPort}` });
  await assert.rejects(source.execute('migrate-pause'), /migrate-pause is currently only supported during postcopy-active state/, 'pre-copy cannot be paused');
  await source.execute('migrate-start-postcopy');
  await waitFor(async () => (await dest.execute<Info>('query-migrate')).status === 'postcopy-active', 'the destination to run the guest');
  await waitFor(async () => ((await source.execute<Info>('query-migrate')).ram?.['postcopy-bytes'] ?? 0) > 4 * MiB, 'some of RAM after the switch');
  if (how === 'cut') for (const socket of sockets) socket.destroy();
  else await (how === 'pause-source' ? source : dest).execute('migrate-pause');
  await waitMigration(source, (i) => i.status === 'postcopy-paused');
  await waitFor(async () => (await dest.execute<Info>('query-migrate')).status === 'postcopy-paused', 'the destination to pause');
  if (how !== 'cut') assert.match((how === 'pause-source' ? source : dest).stderr, /post-copy paused: Paused by migrate-pause/);
  // Paused: the guest stays stopped on the source, running on the destination on what it has.
  assert.equal(await status(source), 'finish-migrate');
  assert.equal(await status(dest), 'running');
  await assert.rejects(dest.execute('migrate-pause'), /only supported during postcopy-active state/, 'paused already');
  // Its vCPU soon waits on a page that cannot come now: the blocktime grows while it waits.
  const blocked = async (): Promise<number> => (await dest.execute<Info>('query-migrate'))['postcopy-vcpu-blocktime']?.[0] ?? -1;
  const first = await blocked();
  assert.ok(first >= 0, 'postcopy-vcpu-blocktime on the destination');
  await waitFor(async () => (await blocked()) > first + 100, 'the vCPU to be blocked on a missing page while paused');
  await assert.rejects(source.execute('migrate', { uri: 'tcp:127.0.0.1:1', resume: false }), /There's a migration process in progress/);
  await assert.rejects(dest.execute('migrate-recover', { uri: 'bogus:x' }), /./);
  await dest.execute('migrate-recover', { uri: 'tcp:127.0.0.1:0' });
  await assert.rejects(dest.execute('migrate-recover', { uri: 'tcp:127.0.0.1:0' }), /Migrate recovery is triggered already/);
  const recovered = (await dest.execute<{ 'socket-address'?: Array<{ host: string; port: string }> }>('query-migrate'))['socket-address']?.[0];
  assert.ok(recovered);
  await source.execute('migrate-set-parameters', { 'max-postcopy-bandwidth': 0 });
  await source.execute('migrate', { uri: `tcp:${recovered.host}:${recovered.port}`, resume: true });
  const done = await waitMigration(source, (i) => i.status === 'completed' || i.status === 'failed', 60_000) as unknown as Info;
  assert.equal(done.status, 'completed', done['error-desc']);
  await waitFor(async () => (await dest.execute<Info>('query-migrate')).status === 'completed', 'the destination to complete');
  assert.match(source.stderr, /post-copy paused: .*migrate-recover on the destination, then migrate with resume here, goes on/);
  assert.match(source.stderr, /post-copy resumed on tcp:[^:]+:\d+( \(TLS\))?: \d+ pages to send again/);
  // The recovered connection is a TLS session too.
  if (tls) assert.match(source.stderr, /post-copy resumed on tcp:[^:]+:\d+ \(TLS\): /);
  assert.match(dest.stderr, /post-copy resumed: \d+ pages still to come/);
  assert.equal(await status(source), 'postmigrate');
  // One vCPU: the time it waited is the time the whole guest waited.
  const final = await dest.execute<Info>('query-migrate');
  const perVcpu = final['postcopy-vcpu-blocktime'];
  assert.ok(perVcpu && perVcpu.length === 1 && perVcpu[0]! > first + 100, JSON.stringify(final));
  assert.ok(Math.abs(final['postcopy-blocktime']! - perVcpu[0]!) <= 1, JSON.stringify(final));
  const start = await passOf(dest);
  await waitFor(async () => (await passOf(dest)) > start, 'the pass counter to move on the destination');
  await dest.execute('stop');
  const check = await dest.execute<Check>('x-ferry-check-memory');
  assert.ok(check.ok, check.problem);
}

test('sim: post-copy recovers from a broken connection: both sides pause, migrate-recover and migrate with resume go on from what arrived, and the guest is whole', async (t) => {
  await recoverAfter(t, 'cut');
});

test('sim: migrate-pause on the source breaks post-copy\'s connection; both sides pause and recover as from a network failure', async (t) => {
  await recoverAfter(t, 'pause-source');
});

test('sim: migrate-pause on the destination does the same from its side', async (t) => {
  await recoverAfter(t, 'pause-destination');
});

test('sim: post-copy inside TLS sessions (tls-creds-x509): paused by migrate-pause, recovered over a new session, the guest whole', async (t) => {
  await recoverAfter(t, 'pause-source', true);
});

test('sim: post-copy refused cleanly — a destination without postcopy-ram, exec:, start-postcopy too late — and the source guest runs on', async (t) => {
  const dir = scratch(t);
  const source = await started(t, dir, 'src', GUEST);
  await source.execute('migrate-set-capabilities', POSTCOPY);

  // The destination has not turned it on: it refuses at ADVISE, before any page.
  const plain = await started(t, dir, 'dst-plain', [...GUEST, '--incoming', 'tcp:127.0.0.1:0']);
  await source.execute('migrate-set-parameters', { 'max-bandwidth': 0 });
  await source.execute('migrate', { uri: await plain.incomingAddress() });
  const refused = await waitMigration(source, (i) => i.status === 'failed' || i.status === 'completed') as unknown as Info;
  assert.equal(refused.status, 'failed');
  assert.equal(await plain.exited, 1);
  assert.match(plain.stderr, /The source asks for post-copy \(CMD_POSTCOPY_ADVISE at offset \d+\), but postcopy-ram is off here: turn it on with migrate-set-capabilities on the destination too/);
  assert.equal(await status(source), 'running');

  // exec: has no way back for page requests.
  await source.execute('migrate', { uri: `exec:cat > ${join(dir, 'never')}` });
  const exec = await waitMigration(source, (i) => i.status === 'failed' || i.status === 'completed') as unknown as Info;
  assert.equal(exec.status, 'failed');
  assert.match(exec['error-desc'] ?? '', /Cannot use the postcopy-ram capability over exec:.*use tcp:, unix: or fd: with a socket/);
  assert.equal(await status(source), 'running');

  // Once completed, there is nothing to switch.
  const dest = await started(t, dir, 'dst', [...GUEST, '--incoming', 'defer']);
  const uri = await listening(dest);
  await source.execute('stop');
  await source.execute('migrate', { uri });
  await waitMigration(source, (i) => i.status === 'completed');
  await assert.rejects(source.execute('migrate-start-postcopy'), /Postcopy cannot start now: the migration is completed/);
});

const kvm = kvmAvailable();

test('kvm: post-copy of a running KVM guest over tcp: its vCPU faults pages in on the destination; its memory holds together and it goes on', { skip: kvm.ok ? false : `needs /dev/kvm: ${kvm.reason}` }, async (t) => {
  const dir = scratch(t);
  // Under KVM the guest runs as fast as its CPU lets it (in the nested KVM host an emulated
  // one): it sweeps 8 MiB of its 64, and post-copy is capped so that it runs on the
  // destination while pages still come.
  const args = ['-m', '64M', '--accel', 'kvm', '--guest', 'builtin:sweep,to=8M'];
  const dest = await started(t, dir, 'dst', [...args, '--incoming', 'defer'], { NODE_DEBUG: 'ferry' });
  const source = await started(t, dir, 'src', args);
  await dest.execute('migrate-set-capabilities', { capabilities: [{ capability: 'postcopy-blocktime', state: true }] });
  const uri = await listening(dest);
  await waitFor(async () => (await passOf(source)) >= 1, 'a first pass of the guest', 60_000);
  // The switch at once, pre-copy capped: whatever the emulated CPU's speed, the guest's
  // pages go after it (a guest this small converges in pre-copy otherwise).
  await source.execute('migrate-set-capabilities', POSTCOPY);
  await source.execute('migrate-set-parameters', { 'max-bandwidth': 4 * MiB, 'max-postcopy-bandwidth': 4 * MiB });
  await source.execute('migrate', { uri });
  await source.execute('migrate-start-postcopy');
  const info = await waitMigration(source, (i) => i.status === 'completed' || i.status === 'failed', 120_000) as unknown as Info;
  assert.equal(info.status, 'completed', info['error-desc']);
  assert.ok(info.ram!['postcopy-bytes'] > 0, JSON.stringify(info.ram));
  await waitFor(async () => (await dest.execute<Info>('query-migrate')).status === 'completed', 'the destination to complete', 60_000);
  t.diagnostic(`post-copy under KVM: ${info.ram!['postcopy-requests']} page requests, ${info.ram!['postcopy-bytes']} B after the switch, downtime ${info.downtime} ms`);
  assert.match(dest.stderr, /the guest ran [\d.]+ ms before the last page arrived/);
  // The faults came from the vCPU's own thread (KVM_RUN): postcopy-blocktime counts its waits.
  const blocktime = await dest.execute<Info>('query-migrate');
  t.diagnostic(`postcopy-vcpu-blocktime ${JSON.stringify(blocktime['postcopy-vcpu-blocktime'])} ms, postcopy-blocktime ${blocktime['postcopy-blocktime']} ms`);
  assert.equal(blocktime['postcopy-vcpu-blocktime']?.length, 1, JSON.stringify(blocktime));
  assert.ok(blocktime['postcopy-vcpu-blocktime'][0]! > 0, JSON.stringify(blocktime));
  assert.equal(await status(dest), 'running');
  const start = await passOf(dest);
  await waitFor(async () => (await passOf(dest)) > start, 'the pass counter to move on the destination', 60_000);
  await dest.execute('stop');
  const check = await dest.execute<Check>('x-ferry-check-memory');
  assert.ok(check.ok, check.problem);
});
