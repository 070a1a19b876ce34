// One VM as QMP sees it, in this process: the Machine (sim), its QMP server on a unix
// socket and the migration engine, wired by Vmm. The commands and events that come from
// the wiring here — the run-state commands, Ferry's x-ferry-* inspection commands,
// HMP, and the refusals — each get a check; the engine itself is tested in migration/.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseGuestSpec } from '../guests/spec.js';
import { QmpClient } from '../qmp/client.js';
import { Vmm } from './vmm.js';

const MiB = 1024 * 1024;

async function vmWithClient(t: import('node:test').TestContext, extra: { incoming?: boolean; name?: string; uuid?: string } = {}): Promise<{ vmm: Vmm; qmp: QmpClient; quits: number[] }> {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-vmm-'));
  const path = join(dir, 'qmp.sock');
  const quits: number[] = [];
  const vmm = await Vmm.create({
    accel: 'sim', memorySize: 8 * MiB, guest: parseGuestSpec('builtin:sweep,to=4M,rate=200000'),
    qmp: [`unix:${path},server=on,wait=off`], onQuit: (code) => quits.push(code), ...extra,
  });
  const qmp = await QmpClient.connect(path);
  t.after(async () => {
    qmp.close();
    await vmm.destroy();
    rmSync(dir, { recursive: true, force: true });
  });
  return { vmm, qmp, quits };
}

test('vmm: query-status, stop and cont follow the machine, with STOP and RESUME events', async (t) => {
  const { qmp, vmm } = await vmWithClient(t, { name: 'guest-1' });
  assert.deepEqual(await qmp.execute('query-status'), { status: 'running', running: true, singlestep: false });
  assert.deepEqual(await qmp.execute('query-name'), { name: 'guest-1' });
  assert.deepEqual(await qmp.execute('query-kvm'), { enabled: false, present: false });
  await qmp.execute('stop');
  await qmp.waitForEvent('STOP', undefined, 5000);
  assert.equal(vmm.machine.runState, 'paused');
  await qmp.execute('cont');
  await qmp.waitForEvent('RESUME', undefined, 5000);
  assert.equal((await qmp.execute<{ status: string }>('query-status')).status, 'running');
});

test('vmm: x-ferry-* inspect the guest — pass counter, memory check, RAM digest and state only while stopped', async (t) => {
  const { qmp, vmm } = await vmWithClient(t);
  const deadline = Date.now() + 10_000;
  while (((await qmp.execute<{ pass?: number }>('x-ferry-query-guest')).pass ?? 0) < 1 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  const guest = await qmp.execute<{ accel: string; 'memory-size': number; pass: number }>('x-ferry-query-guest');
  assert.equal(guest.accel, 'sim');
  assert.equal(guest['memory-size'], 8 * MiB);
  assert.ok(guest.pass >= 1);
  await assert.rejects(qmp.execute('x-ferry-ram-digest'), /Stop the guest first/);
  await assert.rejects(qmp.execute('x-ferry-check-memory'), /Stop the guest first/);
  await assert.rejects(qmp.execute('x-ferry-query-state'), /Stop the guest first/);
  await qmp.execute('stop');
  const check = await qmp.execute<{ ok: boolean; pass: number }>('x-ferry-check-memory');
  assert.equal(check.ok, true);
  const digest = await qmp.execute<{ sha256: string }>('x-ferry-ram-digest');
  assert.match(digest.sha256, /^[0-9a-f]{64}$/);
  assert.deepEqual(await qmp.execute('x-ferry-ram-digest'), digest, 'a stopped guest digests the same twice');
  // The digest is SHA-256 over the block's name and bytes, never-backed pages (the sweep
  // ends at 4 MiB of the 8) hashed as the zeros they read as, not read.
  const block = vmm.machine.memory[0]!;
  assert.equal(block.residency!().subarray(4 * MiB / 4096).some((b) => (b & 1) === 1), false, 'the top 4 MiB was never backed');
  assert.equal(digest.sha256, createHash('sha256').update('pc.ram').update(block.bytes).digest('hex'));
  assert.deepEqual(await qmp.execute('x-ferry-ram-digest'), digest, 'the same once those pages are backed (read above)');
  const state = await qmp.execute<{ sections: Array<{ idstr: string }> }>('x-ferry-query-state');
  assert.ok(state.sections.some((s) => s.idstr === 'cpu'));
});

test('vmm: HMP info status and info migrate; refused commands say why, as QEMU does', async (t) => {
  const { qmp } = await vmWithClient(t);
  assert.match(await qmp.execute<string>('human-monitor-command', { 'command-line': 'info status' }), /VM status: running/);
  assert.equal(await qmp.execute<string>('human-monitor-command', { 'command-line': 'info ramblock' }),
    '              Block Name    PSize              Offset               Used              Total\r\n'
    + '                  pc.ram    4 KiB  0x0000000000000000 0x0000000000800000 0x0000000000800000\r\n');
  assert.match(await qmp.execute<string>('human-monitor-command', { 'command-line': 'info migrate' }), /./);
  await assert.rejects(qmp.execute('migrate-start-postcopy'), /Enable postcopy with migrate_set_capability before the start of migration/);
  await qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'postcopy-ram', state: true }] });
  await assert.rejects(qmp.execute('migrate-start-postcopy'), /Postcopy must be started after migration has been started/);
  await assert.rejects(qmp.execute('migrate-continue', { state: 'pre-switchover' }), /Migration not in expected state: none/);
  await assert.rejects(qmp.execute('migrate-incoming', { uri: 'tcp:127.0.0.1:0' }), /incoming|-incoming/i);
});

test('vmm: query-uuid gives the --uuid, or zeros without one, as QEMU', async (t) => {
  assert.deepEqual(await (await vmWithClient(t)).qmp.execute('query-uuid'), { UUID: '00000000-0000-0000-0000-000000000000' });
  const { qmp } = await vmWithClient(t, { uuid: '6F1C4C2E-0B6A-4D52-9D2C-4B1F3E9A7C10' });
  assert.deepEqual(await qmp.execute('query-uuid'), { UUID: '6f1c4c2e-0b6a-4d52-9d2c-4b1f3e9a7c10' });
});

test('vmm: migrate with a URI that names no transport is refused at once and changes nothing', async (t) => {
  const { qmp } = await vmWithClient(t);
  await assert.rejects(qmp.execute('migrate', { uri: 'bogus:x' }), /unknown transport "bogus"/);
  await assert.rejects(qmp.execute('migrate', { uri: 'tcp:nohost' }), /tcp:nohost/);
  assert.deepEqual(await qmp.execute('query-migrate'), {}, 'no migration was started');
  assert.equal((await qmp.execute<{ status: string }>('query-status')).status, 'running');
});

test('vmm: a live migration driven through HMP alone: migrate_incoming, migrate_set_parameter, migrate -d, info migrate', async (t) => {
  const hmp = (qmp: QmpClient, line: string) => qmp.execute<string>('human-monitor-command', { 'command-line': line });
  const source = await vmWithClient(t);
  const dest = await vmWithClient(t, { incoming: true });
  const dir = mkdtempSync(join(tmpdir(), 'ferry-vmm-hmp-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const uri = `unix:${join(dir, 'mig.sock')}`;
  assert.equal(await hmp(dest.qmp, 'info status'), 'VM status: paused (inmigrate)\r\n');
  assert.equal(await hmp(dest.qmp, `migrate_incoming ${uri}`), '');
  // Where it listens, until the incoming migration is over (QEMU's socket-address).
  assert.deepEqual(await dest.qmp.execute('query-migrate'), { 'socket-address': [{ path: join(dir, 'mig.sock'), type: 'unix' }] });
  assert.match(await hmp(dest.qmp, 'info migrate'), new RegExp(`socket address: \\[\\r\\n\\t${uri}\\r\\n\\]\\r\\n$`));
  assert.equal(await hmp(source.qmp, 'migrate_set_parameter max-bandwidth 0'), '');
  assert.equal(await hmp(source.qmp, `migrate -d ${uri}`), '');
  const deadline = Date.now() + 20_000;
  let info = '';
  while (!/Migration status: (completed|failed)/.test(info) && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 50));
    info = await hmp(source.qmp, 'info migrate');
  }
  assert.match(info, /Migration status: completed\r\n/);
  assert.match(info, /^transferred ram: [1-9]\d* kbytes\r$/m);
  assert.equal(await hmp(source.qmp, 'info status'), 'VM status: paused (postmigrate)\r\n');
  while ((await hmp(dest.qmp, 'info status')) !== 'VM status: running\r\n' && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  assert.equal(await hmp(dest.qmp, 'info status'), 'VM status: running\r\n');
  assert.deepEqual(await dest.qmp.execute('query-migrate'), { status: 'completed' }, 'no socket-address once it is over');
});

test('vmm: calc-dirty-rate measures the sim guest\'s sweep in both modes; the bitmap and a migration exclude each other', async (t) => {
  // The sweep rewrites 2 MiB (from 1 MiB to 3 MiB) again and again at 20000 pages/s:
  // over a 1 s period that is every one of those pages, 2 MB/s of distinct pages.
  const dir = mkdtempSync(join(tmpdir(), 'ferry-vmm-dirty-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const path = join(dir, 'qmp.sock');
  const vmm = await Vmm.create({ accel: 'sim', memorySize: 16 * MiB, guest: parseGuestSpec('builtin:sweep,from=1M,to=3M,rate=20000'), qmp: [`unix:${path}`] });
  t.after(() => vmm.destroy());
  const qmp = await QmpClient.connect(path);
  t.after(() => qmp.close());
  const measure = async (args: Record<string, unknown>): Promise<{ status: string; 'dirty-rate'?: number; mode: string }> => {
    assert.deepEqual(await qmp.execute('calc-dirty-rate', args), {});
    assert.equal((await qmp.execute<{ status: string }>('query-dirty-rate')).status, 'measuring');
    for (;;) {
      const info = await qmp.execute<{ status: string; 'dirty-rate'?: number; mode: string }>('query-dirty-rate');
      if (info.status === 'measured') return info;
      await new Promise((r) => setTimeout(r, 50));
    }
  };
  const sampled = await measure({ 'calc-time': 1, 'sample-pages': 16384 });
  assert.equal(sampled.mode, 'page-sampling');
  assert.ok(sampled['dirty-rate']! >= 1 && sampled['dirty-rate']! <= 3, `page-sampling: ${sampled['dirty-rate']} MB/s`);

  const bitmap = measure({ 'calc-time': 1, mode: 'dirty-bitmap' });
  await assert.rejects(qmp.execute('migrate', { uri: `exec:cat > /dev/null` }), /while calc-dirty-rate measures with the dirty bitmap/);
  const exact = await bitmap;
  assert.ok(exact['dirty-rate']! >= 1 && exact['dirty-rate']! <= 2, `dirty-bitmap: ${exact['dirty-rate']} MB/s`);

  // A migration that runs (slowly, 1 MB/s) holds the dirty log: the bitmap is refused, sampling is not.
  await qmp.execute('migrate-set-parameters', { 'max-bandwidth': 1024 * 1024 });
  await qmp.execute('migrate', { uri: `exec:cat > /dev/null` });
  await assert.rejects(qmp.execute('calc-dirty-rate', { 'calc-time': 1, mode: 'dirty-bitmap' }), /a migration is running/);
  assert.deepEqual(await qmp.execute('calc-dirty-rate', { 'calc-time': 1 }), {});
  await qmp.execute('migrate_cancel');

  await qmp.execute('stop');
  while ((await qmp.execute<{ status: string }>('query-dirty-rate')).status === 'measuring') await new Promise((r) => setTimeout(r, 50));
  assert.equal((await measure({ 'calc-time': 1 }))['dirty-rate'], 0, 'a stopped guest dirties nothing');
});

test('vmm: cont after a shutdown is refused with QEMU\'s words; quit answers, then asks to end', async (t) => {
  const { qmp, vmm, quits } = await vmWithClient(t, { incoming: true });
  assert.equal((await qmp.execute<{ status: string }>('query-status')).status, 'inmigrate');
  vmm.machine.setRunState('shutdown');
  await assert.rejects(qmp.execute('cont'), /Resetting the Virtual Machine is required/);
  assert.deepEqual(await qmp.execute('quit'), {});
  await qmp.waitForEvent('SHUTDOWN', undefined, 5000);
  assert.deepEqual(quits, [0]);
});
