// What happens when a migration does not go to plan: cancel in setup and in active, a
// destination that goes away, a refused connection, truncated and corrupt streams,
// version and section mismatches. Nothing may be lost: the source runs again, the
// destination never starts.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { TransportError } from '../src/errors.js';
import { FAKE_CPU_DESCRIPTION, FAKE_SERIAL_DESCRIPTION, FakeSection } from '../src/migration/fake-vm.js';
import { channelFromBytes, createCollectingChannel } from '../src/stream/memory-channel.js';
import type { Channel } from '../src/transport/channel.js';
import { listenerFor, makePair, makeSide, statuses, waitFor } from './migration-engine-helpers.js';
import type { Side } from './migration-engine-helpers.js';

const MiB = 1024 * 1024;

function eventsOn(side: Side): void {
  side.migration.setCapabilities([{ capability: 'events', state: true }]);
}

/** The whole stream a 1 MiB source with some data would send (through a collecting channel). */
async function recordStream(prepare?: (src: Side) => void): Promise<Uint8Array> {
  const sink = createCollectingChannel();
  const src = makeSide({ memorySize: 1 * MiB }, { connect: async () => sink });
  src.vm.fillPages(1, 40);
  src.vm.cpu.state = { rip: 0x1234n, flags: 2, regs: new Uint8Array(16).fill(9), halted: true };
  prepare?.(src);
  src.migration.migrate('memory:');
  await src.migration.whenSettled();
  assert.equal(src.migration.status, 'completed', src.migration.queryMigrate()['error-desc']);
  return sink.bytes();
}

/** Feed `bytes` to a fresh destination; returns it once the load has ended. */
async function loadInto(bytes: Uint8Array, prepare?: (dst: Side) => void): Promise<Side> {
  const dst = makeSide({ memorySize: 1 * MiB, incoming: true }, { listen: async () => listenerFor(channelFromBytes(bytes, { chunkSize: 4096 })) });
  prepare?.(dst);
  await dst.migration.migrateIncoming('memory:');
  await dst.migration.whenIncomingSettled();
  return dst;
}

function assertNeverStarted(dst: Side): void {
  assert.equal(dst.vm.runState, 'inmigrate');
  assert.ok(!dst.vm.runStates.includes('running'), `run states ${dst.vm.runStates.join(',')}`);
  assert.equal(dst.vm.cpu.loads, 0, 'no device state installed');
  assert.equal(dst.vm.serial.loads, 0);
}

/** Offset of the EOF byte: the vmdesc (0x06, be32 length, JSON) ends the stream right after it. */
function eofOffset(bytes: Uint8Array): number {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (let i = bytes.length - 6; i > 0; i--) {
    if (bytes[i] === 0x06 && bytes[i - 1] === 0x00 && dv.getUint32(i + 1) === bytes.length - i - 5) return i - 1;
  }
  throw new Error('no vmdesc found');
}

test('cancel in setup (connect still pending): cancelled, the source keeps running, logging off', async () => {
  let connected: Channel | undefined;
  const src = makeSide({ memorySize: 1 * MiB }, {
    connect: () => new Promise((resolve) => setTimeout(() => resolve((connected = createCollectingChannel())), 50)),
  });
  eventsOn(src);
  src.migration.migrate('memory:');
  assert.equal(src.migration.status, 'setup');
  src.migration.cancel();
  await src.migration.whenSettled();
  assert.equal(src.migration.status, 'cancelled');
  assert.deepEqual(statuses(src.events), ['setup', 'cancelling', 'cancelled']);
  assert.equal(src.vm.runState, 'running');
  assert.equal(src.vm.dirtyLog.active, false);
  await new Promise((r) => setTimeout(r, 80));
  assert.ok(connected, 'the late connection arrived');
  await assert.rejects(connected.write(new Uint8Array(1)), 'and was closed at once');
  // A new migration may start after a cancelled one.
  assert.deepEqual(src.migration.queryMigrate(), { status: 'cancelled' });
});

test('a guest that cannot converge stays active with passes counting; cancel then works on both ends', async (t) => {
  const { src, dst } = makePair(4 * MiB);
  eventsOn(src);
  src.vm.fillPages(0, 512);
  src.vm.startSyncWorkload(64);
  t.after(() => src.vm.stopWorkload());
  src.migration.setParameters({ 'downtime-limit': 0, 'max-bandwidth': 0 });
  await dst.migration.migrateIncoming('memory:');
  src.migration.migrate('memory:');
  await waitFor('10 dirty syncs', () => (src.migration.queryMigrate().ram?.['dirty-sync-count'] ?? 0) >= 10);
  const info = src.migration.queryMigrate();
  assert.equal(info.status, 'active');
  assert.equal(typeof info['expected-downtime'], 'number');
  assert.ok(info.ram && info.ram.normal > 512, 'dirtied pages were sent again');
  assert.match(src.migration.infoMigrateText(), /^expected downtime: \d+ ms$/m);
  const passEvents = src.events.filter((e) => e.event === 'MIGRATION_PASS').length;
  assert.ok(passEvents >= 10);

  src.migration.cancel();
  await src.migration.whenSettled();
  await dst.migration.whenIncomingSettled();
  assert.equal(src.migration.status, 'cancelled');
  assert.deepEqual(statuses(src.events), ['setup', 'active', 'cancelling', 'cancelled']);
  assert.equal(src.vm.runState, 'running');
  assert.ok(!src.vm.runStates.includes('finish-migrate'), 'never stopped');
  assert.equal(src.vm.dirtyLog.active, false);

  assert.equal(dst.migration.incomingStatus, 'failed');
  assert.ok(dst.migration.incomingError);
  assertNeverStarted(dst);
  assert.equal(dst.migration.queryMigrate().status, 'failed');
});

test('a destination that goes away mid-stream: source failed with error-desc, still running', async (t) => {
  const { src, dst, channels } = makePair(8 * MiB, { highWaterMark: 256 * 1024 });
  eventsOn(src);
  src.vm.fillPages(0, 2048);
  src.vm.startSyncWorkload(64);
  t.after(() => src.vm.stopWorkload());
  src.migration.setParameters({ 'downtime-limit': 0, 'max-bandwidth': 0 });
  await dst.migration.migrateIncoming('memory:');
  src.migration.migrate('memory:');
  await waitFor('active', () => src.migration.status === 'active');
  channels[1].destroy(new TransportError('destination process exited'));
  await src.migration.whenSettled();
  await dst.migration.whenIncomingSettled();
  assert.equal(src.migration.status, 'failed');
  const info = src.migration.queryMigrate();
  assert.ok(info['error-desc'] && info['error-desc'].length > 0, JSON.stringify(info));
  assert.equal(info.ram, undefined, 'a failed migration reports status and error only, as QEMU');
  assert.match(src.migration.infoMigrateText(), /^Migration status: failed \(.+\)$/m);
  assert.deepEqual(statuses(src.events), ['setup', 'active', 'failed']);
  assert.equal(src.vm.runState, 'running');
  assert.equal(src.vm.dirtyLog.active, false);
  assertNeverStarted(dst);
});

test('the peer gone during switchover: the stopped source runs again', async () => {
  const whole = await recordStream();
  const sink = createCollectingChannel({ failAfterBytes: whole.length - 40 });
  const src = makeSide({ memorySize: 1 * MiB }, { connect: async () => sink });
  src.vm.fillPages(1, 40);
  src.migration.migrate('memory:');
  await src.migration.whenSettled();
  assert.equal(src.migration.status, 'failed');
  assert.match(src.migration.queryMigrate()['error-desc'] ?? '', /peer is gone/);
  assert.deepEqual(src.vm.runStates, ['finish-migrate', 'running'], 'stopped for the switchover, then running again');
  assert.equal(src.vm.dirtyLog.active, false);
});

test('a cancel that arrives once every byte is flushed is too late: completed, the source stays stopped', async () => {
  const sink = createCollectingChannel();
  let cancelDuringEnd: (() => void) | undefined;
  const end = sink.end.bind(sink);
  const channel: Channel = {
    description: sink.description,
    read: () => sink.read(),
    write: (data) => sink.write(data),
    destroy: (err) => sink.destroy(err),
    end: async () => {
      await end();
      cancelDuringEnd?.();
    },
  };
  const src = makeSide({ memorySize: 1 * MiB }, { connect: async () => channel });
  eventsOn(src);
  cancelDuringEnd = () => src.migration.cancel();
  src.migration.migrate('memory:');
  await src.migration.whenSettled();
  assert.equal(src.migration.status, 'completed');
  assert.deepEqual(statuses(src.events), ['setup', 'active', 'cancelling', 'completed']);
  assert.equal(src.vm.runState, 'postmigrate');
  assert.ok(!src.vm.runStates.includes('running'), 'never resumed: the destination has the guest now');
});

test('connection refused: failed with the transport error, guest untouched', async () => {
  const src = makeSide({ memorySize: 1 * MiB }, {
    connect: () => Promise.reject(new TransportError('Cannot connect to tcp:127.0.0.1:1: connection refused')),
  });
  eventsOn(src);
  src.migration.migrate('tcp:127.0.0.1:1');
  await src.migration.whenSettled();
  assert.equal(src.migration.status, 'failed');
  assert.deepEqual(src.migration.queryMigrate(), { status: 'failed', 'error-desc': 'Cannot connect to tcp:127.0.0.1:1: connection refused' });
  assert.deepEqual(statuses(src.events), ['setup', 'failed']);
  assert.equal(src.vm.runState, 'running');
  assert.deepEqual(src.vm.runStates, []);
});

test('tls-creds naming no object: migrate and migrate-incoming are refused in QEMU\'s words, nothing connects or listens, nothing goes in clear', async () => {
  let connects = 0;
  let listens = 0;
  const src = makeSide({ memorySize: 1 * MiB }, { connect: () => { connects++; return Promise.reject(new Error('unreachable')); } });
  const dst = makeSide({ memorySize: 1 * MiB, incoming: true }, { listen: () => { listens++; return Promise.reject(new Error('unreachable')); } });
  for (const side of [src, dst]) side.migration.setParameters({ 'tls-creds': 'tls0', 'tls-hostname': 'dest.example' });
  assert.throws(() => src.migration.migrate('tcp:127.0.0.1:4444'), /^MigrationError: No TLS credentials with id 'tls0'$/);
  await assert.rejects(dst.migration.migrateIncoming('tcp:127.0.0.1:4444'), /No TLS credentials with id 'tls0'/);
  assert.equal(src.migration.status, 'none');
  assert.equal(dst.migration.incomingStatus, 'none');
  assert.equal(src.vm.runState, 'running');
  assert.equal(dst.vm.runState, 'inmigrate');
  assert.deepEqual([connects, listens], [0, 0]);
  // An empty tls-creds is QEMU's "no TLS": the migration goes.
  src.migration.setParameters({ 'tls-creds': '' });
  src.migration.migrate('tcp:127.0.0.1:4444');
  await src.migration.whenSettled();
  assert.equal(connects, 1);
});

test('the recorded stream loads whole; a stream cut anywhere before EOF fails and never starts the guest', async () => {
  const whole = await recordStream();
  const complete = await loadInto(whole);
  assert.equal(complete.migration.incomingStatus, 'completed', complete.migration.incomingError);
  assert.equal(complete.vm.runState, 'running');
  assert.equal(complete.vm.cpu.loads, 1);
  assert.equal(complete.vm.cpu.state['rip'], 0x1234n);

  const eof = eofOffset(whole);
  const cuts = [0, 3, 8, 20, 40, 1000, 50_000, Math.floor(eof / 2), eof - 30, eof - 1, eof];
  for (const cut of cuts) {
    const dst = await loadInto(whole.subarray(0, cut));
    assert.equal(dst.migration.incomingStatus, 'failed', `cut at ${cut}`);
    assert.match(dst.migration.incomingError ?? '', /offset \d+/, `cut at ${cut}: ${dst.migration.incomingError}`);
    assertNeverStarted(dst);
  }
  // Right after EOF, with the vmdesc missing: tolerated (older streams end there).
  const noVmdesc = await loadInto(whole.subarray(0, eof + 1));
  assert.equal(noVmdesc.migration.incomingStatus, 'completed', noVmdesc.migration.incomingError);
  // A vmdesc cut short is a broken stream, though.
  const shortVmdesc = await loadInto(whole.subarray(0, whole.length - 3));
  assert.equal(shortVmdesc.migration.incomingStatus, 'failed');
  assertNeverStarted(shortVmdesc);
});

test('a corrupt footer names the section and the offset', async () => {
  const whole = await recordStream();
  // The serial section is the last FULL section: its footer is 0x7e + be32 id right before EOF.
  const eof = eofOffset(whole);
  const bad = whole.slice();
  assert.equal(bad[eof - 5], 0x7e);
  bad[eof - 5] = 0x7f;
  const dst = await loadInto(bad);
  assert.equal(dst.migration.incomingStatus, 'failed');
  assert.match(dst.migration.incomingError ?? '', /footer for "fake-serial".*offset \d+/);
  assertNeverStarted(dst);
});

test('versions: newer than supported refused, older than the minimum refused, older but supported loads', async () => {
  const newer = await recordStream((src) => {
    src.vm.stateSections[1] = new FakeSection('fake-serial', 0, { ...FAKE_SERIAL_DESCRIPTION, version: 2 }, src.vm.serial.state);
  });
  const a = await loadInto(newer);
  assert.equal(a.migration.incomingStatus, 'failed');
  assert.match(a.migration.incomingError ?? '', /Cannot load section "fake-serial": version 2 is newer than 1/);
  assertNeverStarted(a);

  const plain = await recordStream();
  const b = await loadInto(plain, (dst) => {
    dst.vm.stateSections[1] = new FakeSection('fake-serial', 0, { ...FAKE_SERIAL_DESCRIPTION, version: 3, minimumVersion: 2 }, {});
  });
  assert.equal(b.migration.incomingStatus, 'failed');
  assert.match(b.migration.incomingError ?? '', /version 1 is older than the minimum 2/);

  // A version-1 CPU section (without the v2 "halted" field) into a version-2 description.
  const { halted: _unused, ...v1State } = { rip: 5n, flags: 1, regs: new Uint8Array(16), halted: false };
  const older = await recordStream((src) => {
    const fields = FAKE_CPU_DESCRIPTION.fields.filter((f) => f.name !== 'halted');
    src.vm.stateSections[0] = new FakeSection('fake-cpu', 0, { ...FAKE_CPU_DESCRIPTION, version: 1, fields }, v1State);
  });
  const c = await loadInto(older);
  assert.equal(c.migration.incomingStatus, 'completed', c.migration.incomingError);
  assert.equal(c.vm.cpu.loads, 1);
  assert.equal(c.vm.cpu.state['rip'], 5n);
});

test('a section the destination does not know, or another machine type, is refused', async () => {
  const extra = await recordStream((src) => {
    src.vm.stateSections.push(new FakeSection('fake-extra', 0, FAKE_SERIAL_DESCRIPTION, { ier: 0, lcr: 0, divider: 0 }));
  });
  const a = await loadInto(extra);
  assert.equal(a.migration.incomingStatus, 'failed');
  assert.match(a.migration.incomingError ?? '', /Unknown savevm section or instance 'fake-extra' 0/);
  assertNeverStarted(a);

  const otherMachine = makeSide({ memorySize: 1 * MiB, incoming: true, machineType: 'pc-q35-7.2' }, {
    listen: async () => listenerFor(channelFromBytes(await recordStream())),
  });
  await otherMachine.migration.migrateIncoming('memory:');
  await otherMachine.migration.whenIncomingSettled();
  assert.match(otherMachine.migration.incomingError ?? '', /Machine type received is 'pc-i440fx-7.2' and local is 'pc-q35-7.2'/);
  assertNeverStarted(otherMachine);
});

test('migrate-incoming outside inmigrate is refused, as QEMU refuses it without -incoming', async () => {
  const src = makeSide({ memorySize: 1 * MiB }, {});
  await assert.rejects(src.migration.migrateIncoming('tcp:0:4444'), /'-incoming' was not specified on the command line/);
});
