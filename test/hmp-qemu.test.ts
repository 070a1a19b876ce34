// The same HMP command lines put to QEMU 7.2 and to a Ferry VM through
// human-monitor-command: every answer must be the same text, byte for byte — the
// parameter and capability listings (before and after changes), values with suffixes,
// dirty-rate lines that start nothing, and the wording of each kind of mistake. Skips
// only when qemu-system-x86_64 is missing.

import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseGuestSpec } from '../src/guests/spec.js';
import { QmpClient } from '../src/qmp/client.js';
import { Vmm } from '../src/vmm/vmm.js';
import { runFerry } from './e2e-helpers.js';

const QEMU = 'qemu-system-x86_64';
const QEMU_SKIP = spawnSync(QEMU, ['--version']).error ? `needs ${QEMU} (apt-get install qemu-system-x86)` : false;

/** In order: a line's answer may depend on the ones before it (a parameter set, then listed). */
const LINES = [
  'info migrate_parameters',
  'info migrate_capabilities',
  'migrate_set_parameter downtime-limit 100',
  'migrate_set_parameter max-bandwidth 100',
  'migrate_set_parameter xbzrle-cache-size 32M',
  'migrate_set_parameter announce-initial 1k',
  'migrate_set_parameter cpu-throttle-tailslow yes',
  'migrate_set_parameter compress-wait-thread off',
  'migrate_set_parameter multifd-compression zlib',
  'migrate_set_parameter tls-hostname example.org',
  'migrate_set_parameter downtime-limit abc',
  'migrate_set_parameter downtime-limit -5',
  'migrate_set_parameter bogus 1',
  'migrate_set_parameter downtime-limit',
  'migrate_set_parameter cpu-throttle-initial abc',
  'migrate_set_parameter cpu-throttle-initial 300',
  'migrate_set_parameter cpu-throttle-initial 0',
  'migrate_set_parameter max-bandwidth abc',
  'migrate_set_parameter compress-wait-thread maybe',
  'migrate_set_parameter multifd-compression bogus',
  'migrate_set_parameter downtime-limit 3000000',
  'migrate_set_parameter xbzrle-cache-size 1000',
  'migrate_set_parameter block-bitmap-mapping x',
  'migrate_set_parameter downtime-limit 1 2',
  'info migrate_parameters',
  'migrate_set_parameter max-bandwidth 1G',
  'migrate_set_parameter downtime-limit 1k',
  'info migrate_parameters',
  'migrate_set_capability xbzrle on',
  'migrate_set_capability events on',
  'migrate_set_capability xbzrle maybe',
  'migrate_set_capability bogus on',
  'migrate_set_capability xbzrle',
  'migrate_set_capability',
  'info migrate_capabilities',
  'migrate_cancel',
  'migrate_cancel extra',
  'migrate_continue pre-switchover',
  'migrate_incoming tcp:127.0.0.1:0',
  'migrate',
  'migrate -x exec:true',
  'info dirty_rate',
  'info name',
  'info uuid',
  'calc_dirty_rate',
  'calc_dirty_rate x',
  'calc_dirty_rate 0',
  'calc_dirty_rate 61',
  'calc_dirty_rate 1 100',
  'calc_dirty_rate -r -b 1',
  'info bogus',
  'bogus',
  'stop',
  'info status',
  'cont',
  'info status',
];

async function answers(qmp: QmpClient): Promise<string[]> {
  const out: string[] = [];
  for (const line of LINES) out.push(await qmp.execute<string>('human-monitor-command', { 'command-line': line }));
  return out;
}

async function qemuClient(t: TestContext, dir: string, extra: readonly string[] = []): Promise<QmpClient> {
  const path = join(dir, `qemu-${extra.length}.qmp`);
  const child = spawn(QEMU, ['-accel', 'tcg', '-M', 'pc', '-m', '64', '-nodefaults', '-display', 'none', '-qmp', `unix:${path},server=on,wait=off`, ...extra], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.setEncoding('utf8').on('data', (s: string) => (stderr += s));
  t.after(() => child.kill('SIGKILL'));
  const deadline = Date.now() + 30_000;
  for (;;) {
    try {
      const qmp = await QmpClient.connect(path);
      t.after(() => qmp.close());
      return qmp;
    } catch (err) {
      if (child.exitCode !== null) assert.fail(`QEMU exited (${child.exitCode}): ${stderr}`);
      if (Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

test('ferry hmp prints the monitor\'s text, from QEMU 7.2 and from Ferry alike, and exits 1 on an error', { skip: QEMU_SKIP, timeout: 60_000 }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-hmp-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const qemu = await qemuClient(t, dir, ['-S']);
  await qemu.close(); // QEMU's monitor serves one client at a time
  const ferryPath = join(dir, 'ferry.qmp');
  const vmm = await Vmm.create({ accel: 'sim', memorySize: 8 * 1024 * 1024, guest: parseGuestSpec('builtin:idle'), qmp: [`unix:${ferryPath}`], startPaused: true, onQuit: () => {} });
  t.after(() => vmm.destroy());
  const flagged: Array<[number | null, string]> = [];
  for (const socket of [join(dir, 'qemu-1.qmp'), ferryPath]) {
    // Dashes in the command line are the monitor's flags, not ferry's options.
    const flags = await runFerry(['hmp', socket, 'calc_dirty_rate', '-r', '-b', '1']);
    assert.doesNotMatch(flags.stderr, /unknown option/, socket);
    flagged.push([flags.code, flags.stdout]);
    const ok = await runFerry(['hmp', socket, 'info', 'status']);
    assert.deepEqual([ok.code, ok.stdout], [0, 'VM status: paused (prelaunch)\n'], `${socket}: ${ok.stderr}`);
    const set = await runFerry(['hmp', socket, 'migrate_set_parameter', 'downtime-limit', '100']);
    assert.deepEqual([set.code, set.stdout], [0, ''], socket);
    const bad = await runFerry(['hmp', socket, 'migrate_set_parameter', 'downtime-limit', 'abc']);
    assert.equal(bad.code, 1, socket);
    assert.match(bad.stdout, /^Error: Parameter 'downtime-limit' expects a non-negative number/);
    const unknown = await runFerry(['hmp', socket, 'bogus']);
    assert.deepEqual([unknown.code, unknown.stdout], [1, "unknown command: 'bogus'\n"], socket);
  }
  assert.deepEqual(flagged[1], flagged[0], 'calc_dirty_rate -r -b: QEMU and Ferry answer alike');
  assert.match(flagged[0]![1], /dirty ring or dirty bitmap/, 'the flags reached the monitor');
});

test('HMP and QMP: a destination listening after migrate_incoming looks the same in QEMU 7.2 and Ferry', { skip: QEMU_SKIP, timeout: 60_000 }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-hmp-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const look = async (qmp: QmpClient, socket: string) => {
    assert.equal(await qmp.execute<string>('human-monitor-command', { 'command-line': `migrate_incoming unix:${socket}` }), '');
    const info = await qmp.execute<{ 'socket-address'?: Array<Record<string, unknown>> }>('query-migrate');
    const text = await qmp.execute<string>('human-monitor-command', { 'command-line': 'info migrate' });
    const status = await qmp.execute<string>('human-monitor-command', { 'command-line': 'info status' });
    // The socket paths differ by design; everything else must not.
    return { info: JSON.stringify(info).replace(socket, 'SOCKET'), text: text.replace(socket, 'SOCKET'), status };
  };
  const qemu = await look(await qemuClient(t, dir, ['-incoming', 'defer']), join(dir, 'qemu-mig.sock'));
  const path = join(dir, 'ferry.qmp');
  const vmm = await Vmm.create({ accel: 'sim', memorySize: 8 * 1024 * 1024, guest: parseGuestSpec('builtin:sweep,to=4M,rate=20000'), qmp: [`unix:${path}`], incoming: true, onQuit: () => {} });
  t.after(() => vmm.destroy());
  const client = await QmpClient.connect(path);
  t.after(() => client.close());
  const ferry = await look(client, join(dir, 'ferry-mig.sock'));
  assert.deepEqual(ferry, qemu);
  assert.match(ferry.text, /socket address: \[\r\n\tunix:SOCKET\r\n\]\r\n$/);
  assert.equal(ferry.status, 'VM status: paused (inmigrate)\r\n');
});

test('HMP: QEMU 7.2 and Ferry answer the same migration and run-state command lines with the same text', { skip: QEMU_SKIP, timeout: 60_000 }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-hmp-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const qemu = await answers(await qemuClient(t, dir));

  const path = join(dir, 'ferry.qmp');
  const vmm = await Vmm.create({ accel: 'sim', memorySize: 8 * 1024 * 1024, guest: parseGuestSpec('builtin:sweep,to=4M,rate=20000'), qmp: [`unix:${path}`], onQuit: () => {} });
  t.after(() => vmm.destroy());
  const client = await QmpClient.connect(path);
  t.after(() => client.close());
  const ferry = await answers(client);

  LINES.forEach((line, i) => assert.equal(ferry[i], qemu[i], `"${line}"`));
  // Not vacuous: the listings changed along the way, and they changed alike.
  assert.match(ferry[24]!, /downtime-limit: 100 ms\r\n/);
  assert.match(ferry[27]!, /max-bandwidth: 1073741824 bytes\/second\r\ndowntime-limit: 1024 ms\r\n/);
  assert.match(ferry[34]!, /^xbzrle: on\r\n/);
  assert.equal(ferry[LINES.indexOf('stop') + 1], 'VM status: paused\r\n');
  assert.match(ferry[LINES.indexOf('calc_dirty_rate 61')]!, /^Error: calc-time is out of range\[1, 60\]\.\r\n$/);
});

test('query-memdev and HMP info memdev: QEMU 7.2 and Ferry describe guest RAM alike, from -m and from a shared memory-backend-file', { skip: QEMU_SKIP, timeout: 60_000 }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-hmp-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const describe = async (qmp: QmpClient) => ({
    memdev: await qmp.execute<unknown[]>('query-memdev'),
    text: await qmp.execute<string>('human-monitor-command', { 'command-line': 'info memdev' }),
  });
  const spec = `memory-backend-file,id=mem0,size=64M,mem-path=${join(dir, 'ram')},share=on`;
  for (const shared of [false, true]) {
    const qemu = await describe(await qemuClient(t, dir, ['-S', ...(shared ? ['-object', spec, '-machine', 'memory-backend=mem0'] : [])]));
    const path = join(dir, `ferry-${shared}.qmp`);
    const vmm = await Vmm.create({
      accel: 'sim', memorySize: 64 * 1024 * 1024, guest: parseGuestSpec('builtin:idle'), qmp: [`unix:${path}`], startPaused: true, onQuit: () => {},
      ...(shared ? { objects: [spec], memoryBackend: { id: 'mem0', path: join(dir, 'ram'), share: true } } : {}),
    });
    t.after(() => vmm.destroy());
    const client = await QmpClient.connect(path);
    t.after(() => client.close());
    const ferry = await describe(client);
    assert.deepEqual(ferry, qemu, shared ? 'memory-backend-file' : '-m');
    assert.match(ferry.text, shared ? /^memory backend: mem0\r\n  size:  67108864\r\n.*  share: true\r\n/s : /^memory backend: pc\.ram\r\n/);
  }
});
