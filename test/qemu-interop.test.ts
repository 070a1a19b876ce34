// Ferry next to QEMU 7.2: QEMU's own analyze-migration.py decodes a stream that a
// running Ferry saved with `migrate "exec:cat > FILE"`, and `ferry migrate` (which only
// speaks QMP) drives a live migration between two real QEMU processes, and a QEMU
// destination takes the return-path commands of a Ferry stream.

import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { FERRY_MAIN, FerryProcess } from '../src/cli/ferry-process.js';
import { runMigration } from '../src/cli/migrate-command.js';
import { QmpClient } from '../src/qmp/client.js';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const SCRIPT = join(ROOT, '.cache', 'qemu-scripts', 'analyze-migration.py');
const QEMU = 'qemu-system-x86_64';
const BOOTSECTOR = join(ROOT, 'dist', 'guests', 'sweep-bootsector.bin');
const SCRIPT_SKIP = existsSync(SCRIPT) ? false : 'QEMU\'s analyze-migration.py not fetched: run scripts/fetch-qemu-scripts.sh (as root) first';
const QEMU_SKIP = spawnSync(QEMU, ['--version']).error ? `needs ${QEMU} (apt-get install qemu-system-x86)` : false;
/**
 * Where a QEMU destination stops loading a Ferry stream: at Ferry's vCPU state, the first
 * section after the header, the configuration, every pass of RAM and the global state that
 * QEMU cannot take (Ferry's "cpu" is its own description, not QEMU's version 11).
 */
const FERRY_CPU_REFUSED = /cpu: incoming version_id 1 is too old[^\n]*\n[^\n]*error while loading state for instance 0x0 of device 'cpu'/;

function scratch(t: TestContext): string {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-qemu-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** A QEMU 7.2 destination listening on unix:`sock`; `exited` gives its stderr once it has exited. */
async function qemuDestination(t: TestContext, sock: string, extra: readonly string[] = []): Promise<{ exited: Promise<string> }> {
  const qemu = spawn(QEMU, ['-accel', 'tcg', '-m', '64', '-display', 'none', '-nodefaults', ...extra, '-incoming', `unix:${sock}`], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  qemu.stderr!.setEncoding('utf8').on('data', (s: string) => (stderr += s));
  t.after(() => qemu.kill('SIGKILL'));
  const exited = new Promise<string>((resolve) => qemu.once('exit', () => resolve(stderr)));
  const deadline = Date.now() + 30_000;
  while (!existsSync(sock)) {
    if (qemu.exitCode !== null || Date.now() > deadline) assert.fail(`QEMU did not listen: ${stderr}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return { exited };
}

test('analyze-migration.py decodes a snapshot that a running Ferry saved with exec:cat', { skip: SCRIPT_SKIP }, async (t) => {
  const dir = scratch(t);
  const vm = await FerryProcess.start({ dir, name: 'src', args: ['--accel', 'sim', '-m', '16M', '--guest', 'builtin:sweep,rate=20000'] });
  t.after(() => vm.quit());
  await new Promise((r) => setTimeout(r, 300));
  const file = join(dir, 'vm.snapshot');
  const outcome = await runMigration(vm.qmp, { qmp: vm.qmpPath, uri: `exec:cat > ${file}`, maxBandwidth: 0, progress: false });
  assert.equal(outcome.status, 'completed', outcome.info['error-desc']);

  // The device state, decoded by QEMU's tool from the stream's own vmdesc.
  const dump = spawnSync('python3', [SCRIPT, '-f', file], { cwd: dir, encoding: 'utf8', timeout: 60_000 });
  assert.equal(dump.status, 0, dump.stderr);
  const decoded = JSON.parse(dump.stdout) as Record<string, Record<string, unknown>>;
  const names = Object.keys(decoded);
  assert.ok(names.some((n) => n.startsWith('cpu')), `no cpu section in ${names.join(', ')}`);
  assert.ok(names.some((n) => n.startsWith('serial')), `no serial section in ${names.join(', ')}`);

  // Guest RAM, extracted by QEMU's tool, equals the source's RAM at the switchover.
  const extract = spawnSync('python3', [SCRIPT, '-x', '-f', file], { cwd: dir, encoding: 'utf8', timeout: 60_000 });
  assert.equal(extract.status, 0, extract.stderr);
  const ram = readFileSync(join(dir, 'pc.ram'));
  const { createHash } = await import('node:crypto');
  const expected = (await vm.execute<{ sha256: string }>('x-ferry-ram-digest')).sha256;
  const actual = createHash('sha256').update('pc.ram').update(ram).digest('hex');
  assert.equal(actual, expected, 'the RAM QEMU\'s tool extracted differs from the source\'s');
});

test('ferry migrate drives a live migration between two QEMU 7.2 processes over QMP', { skip: QEMU_SKIP, timeout: 180_000 }, async (t) => {
  const dir = scratch(t);
  const accel = existsSync('/dev/kvm') ? 'kvm' : 'tcg';
  const qemu = (name: string, extra: string[]) => {
    const qmp = join(dir, `${name}.qmp`);
    const child = spawn(QEMU, ['-accel', accel, '-m', '32', '-display', 'none', '-nodefaults', '-serial', `file:${join(dir, `${name}.serial`)}`,
      '-drive', `file=${BOOTSECTOR},format=raw,if=ide`, '-qmp', `unix:${qmp},server=on,wait=off`, ...extra], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr!.setEncoding('utf8').on('data', (s: string) => (stderr += s));
    t.after(() => child.kill('SIGKILL'));
    return { child, qmp, stderr: () => stderr };
  };
  const dest = qemu('dst', ['-incoming', 'unix:' + join(dir, 'mig.sock')]);
  const source = qemu('src', []);
  const connect = async (path: string, vm: { child: { exitCode: number | null }; stderr: () => string }): Promise<QmpClient> => {
    const deadline = Date.now() + 30_000;
    for (;;) {
      try {
        return await QmpClient.connect(path);
      } catch (err) {
        if (vm.child.exitCode !== null) assert.fail(`QEMU exited (${vm.child.exitCode}): ${vm.stderr()}`);
        if (Date.now() > deadline) throw err;
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  };
  // QEMU's QMP monitor serves one client at a time: connect only when needed.
  await (await connect(source.qmp, source)).close();
  const dstQmp = await connect(dest.qmp, dest);
  t.after(() => dstQmp.close());
  // Let the boot-sector guest sweep a few passes first (it writes a byte per pass).
  const serial = join(dir, 'src.serial');
  const deadline = Date.now() + 60_000;
  while (!existsSync(serial) || readFileSync(serial).length < 2) {
    if (Date.now() > deadline) assert.fail(`the QEMU guest did not start sweeping: ${source.stderr()}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  const result = spawnSync(process.execPath, [FERRY_MAIN, 'migrate', '--qmp', source.qmp, 'unix:' + join(dir, 'mig.sock'), '--max-bandwidth', '0', '--no-progress'], { encoding: 'utf8', timeout: 120_000 });
  assert.equal(result.status, 0, `${result.stdout}\n${result.stderr}`);
  assert.match(result.stdout, /Migration completed/);
  assert.match(result.stdout, /downtime/);
  const status = await dstQmp.execute<{ status: string }>('query-status');
  assert.equal(status.status, 'running');
  const srcQmp = await connect(source.qmp, source);
  t.after(() => srcQmp.close());
  const srcStatus = await srcQmp.execute<{ status: string }>('query-status');
  assert.equal(srcStatus.status, 'postmigrate');
});

test('validate-uuid between Ferry and QEMU 7.2, both ways: a different UUID is refused at the configuration, the same one is let through', { skip: QEMU_SKIP, timeout: 120_000 }, async (t) => {
  const dir = scratch(t);
  const SAME = '6f1c4c2e-0b6a-4d52-9d2c-4b1f3e9a7c10';
  const OTHER = '0d9e8b7a-6c5d-4e3f-8a1b-2c3d4e5f6a7b';
  // Ferry → QEMU: QEMU's own check. With the same UUID it gets past the configuration and
  // the RAM and stops at Ferry's first device section (the devices are not QEMU's).
  const source = await FerryProcess.start({ dir, name: 'src', args: ['--accel', 'sim', '-m', '64M', '--guest', 'builtin:sweep,rate=20000', '--uuid', SAME], serial: 'null' });
  t.after(() => source.quit());
  await source.execute('migrate-set-capabilities', { capabilities: [{ capability: 'validate-uuid', state: true }] });
  for (const [uuid, expected] of [[OTHER, new RegExp(`UUID received is ${SAME} and local is ${OTHER}`)], [SAME, FERRY_CPU_REFUSED]] as const) {
    const sock = join(dir, `mig-${uuid.slice(0, 4)}.sock`);
    const qemu = await qemuDestination(t, sock, ['-uuid', uuid]);
    await runMigration(source.qmp, { qmp: source.qmpPath, uri: `unix:${sock}`, maxBandwidth: 0, progress: false });
    const qemuErr = await qemu.exited;
    assert.match(qemuErr, expected);
    if (uuid === SAME) assert.doesNotMatch(qemuErr, /UUID/);
    await source.execute('cont').catch(() => {});
  }

  // QEMU → Ferry: Ferry's check, in QEMU's words; the destination never starts.
  const incoming = join(dir, 'ferry-in.sock');
  const dest = await FerryProcess.start({ dir, name: 'dst', args: ['--accel', 'sim', '-m', '64M', '--uuid', OTHER, '--incoming', `unix:${incoming}`], serial: 'null' });
  const qmp = join(dir, 'qemu-src.qmp');
  const qemuSource = spawn(QEMU, ['-accel', 'tcg', '-m', '64', '-display', 'none', '-nodefaults', '-uuid', SAME, '-qmp', `unix:${qmp},server=on,wait=off`], { stdio: ['ignore', 'ignore', 'ignore'] });
  t.after(() => qemuSource.kill('SIGKILL'));
  let client: QmpClient | undefined;
  for (let i = 0; i < 300 && !client; i++) client = await QmpClient.connect(qmp).catch(async () => { await new Promise((r) => setTimeout(r, 100)); return undefined; });
  assert.ok(client, 'QEMU source QMP');
  t.after(() => client!.close());
  await client.execute('migrate-set-capabilities', { capabilities: [{ capability: 'validate-uuid', state: true }] });
  await client.execute('migrate', { uri: `unix:${incoming}` });
  const code = await dest.exited;
  assert.equal(code, 1);
  assert.match(dest.stderr, new RegExp(`incoming migration failed: UUID received is ${SAME} and local is ${OTHER}`));
});

test('QEMU 7.2 takes the return-path commands of a Ferry stream: it opens the return path and loads up to the first device it lacks; the Ferry source runs its guest again', { skip: QEMU_SKIP, timeout: 120_000 }, async (t) => {
  const dir = scratch(t);
  const sock = join(dir, 'mig.sock');
  // A QEMU destination: Ferry's RAM, header and commands are QEMU's format, its devices are
  // not QEMU's, so the load fails at the first device section, after the commands.
  const qemu = await qemuDestination(t, sock);
  const source = await FerryProcess.start({ dir, name: 'src', args: ['--accel', 'sim', '-m', '64M', '--guest', 'builtin:sweep,rate=20000'], serial: 'null' });
  t.after(() => source.quit());
  await source.execute('migrate-set-capabilities', { capabilities: [{ capability: 'return-path', state: true }] });
  const outcome = await runMigration(source.qmp, { qmp: source.qmpPath, uri: `unix:${sock}`, maxBandwidth: 0, progress: false });
  assert.equal(outcome.status, 'failed');
  const qemuErr = await qemu.exited;
  // QEMU got past the header, the configuration, OPEN_RETURN_PATH, PING and the RAM, and
  // stopped at Ferry's first device section.
  assert.match(qemuErr, FERRY_CPU_REFUSED);
  assert.doesNotMatch(qemuErr, /CMD_PING|return path|Unknown combination|RAM block/i);
  assert.equal((await source.execute<{ status: string }>('query-status')).status, 'running');
});

/** A QEMU 7.2 destination with a QMP socket and `-incoming defer`; `exited` gives its stderr once it has exited. */
async function qemuDeferred(t: TestContext, dir: string, name: string, extra: readonly string[]): Promise<{ qmp: QmpClient; exited: Promise<string> }> {
  const qmpPath = join(dir, `${name}.qmp`);
  const qemu = spawn(QEMU, ['-accel', 'tcg', '-m', '64', '-display', 'none', '-nodefaults', ...extra, '-qmp', `unix:${qmpPath},server=on,wait=off`, '-incoming', 'defer'], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  qemu.stderr!.setEncoding('utf8').on('data', (s: string) => (stderr += s));
  t.after(() => qemu.kill('SIGKILL'));
  const exited = new Promise<string>((resolve) => qemu.once('exit', () => resolve(stderr)));
  const deadline = Date.now() + 30_000;
  for (;;) {
    try {
      const qmp = await QmpClient.connect(qmpPath);
      t.after(() => qmp.close());
      return { qmp, exited };
    } catch (err) {
      if (qemu.exitCode !== null || Date.now() > deadline) assert.fail(`QEMU did not start: ${stderr} (${String(err)})`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

test('x-ignore-shared with QEMU 7.2: a QEMU destination mapping the same file takes a Ferry source\'s configuration and MEM_SIZE, with no RAM sent; without the capability it refuses in the words Ferry uses', { skip: QEMU_SKIP, timeout: 180_000 }, async (t) => {
  const dir = scratch(t);
  const backend = `memory-backend-file,id=pc.ram,size=64M,mem-path=${join(dir, 'guest-ram')},share=on`;
  const memory = ['-object', backend, '-machine', 'memory-backend=pc.ram'];
  const source = await FerryProcess.start({ dir, name: 'src', args: ['--accel', 'sim', '-m', '64M', '--guest', 'builtin:sweep,rate=20000', '--object', backend, '--machine', 'memory-backend=pc.ram'], serial: 'null' });
  t.after(() => source.quit());
  await source.execute('migrate-set-parameters', { 'max-bandwidth': 0 });
  // With return-path: the stream is a few KiB, all of it out before QEMU refuses it, and
  // without the destination's answer the source would count that as done.
  await source.execute('migrate-set-capabilities', { capabilities: [{ capability: 'x-ignore-shared', state: true }, { capability: 'return-path', state: true }] });

  // Without the capability, QEMU refuses the configuration.
  const refusing = await qemuDeferred(t, dir, 'dst-off', memory);
  await refusing.qmp.execute('migrate-incoming', { uri: `unix:${join(dir, 'off.sock')}` });
  await source.execute('migrate', { uri: `unix:${join(dir, 'off.sock')}` });
  assert.match(await refusing.exited, /Capability x-ignore-shared is off, but received capability is on/);
  for (const deadline = Date.now() + 30_000; ;) {
    const { status } = await source.execute<{ status: string }>('query-migrate');
    if (status === 'failed') break;
    if (Date.now() > deadline) assert.fail(`the source's migration is ${status}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  assert.equal((await source.execute<{ status: string }>('query-status')).status, 'running');
  await source.execute('migrate-set-capabilities', { capabilities: [{ capability: 'return-path', state: false }, { capability: 'pause-before-switchover', state: true }] });

  // With it, QEMU takes the configuration and every pass (MEM_SIZE with each block's address,
  // pc.ram at 0 as QEMU has it), and stops only at Ferry's vCPU state.
  const dest = await qemuDeferred(t, dir, 'dst-on', memory);
  await dest.qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'x-ignore-shared', state: true }] });
  await dest.qmp.execute('migrate-incoming', { uri: `unix:${join(dir, 'on.sock')}` });
  await source.execute('migrate', { uri: `unix:${join(dir, 'on.sock')}` });
  let info: { status: string; 'error-desc'?: string; ram?: { total: number; transferred: number } };
  for (const deadline = Date.now() + 30_000; ;) {
    info = await source.execute('query-migrate');
    if (info.status === 'pre-switchover') break;
    assert.ok(['setup', 'active', 'device'].includes(info.status), `the source's migration: ${JSON.stringify(info)}`);
    if (Date.now() > deadline) assert.fail(`the source's migration is ${info.status}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  assert.equal((await dest.qmp.execute<{ status: string }>('query-migrate')).status, 'active', 'QEMU took the stream so far');
  assert.equal(info.ram?.total, 0, 'pc.ram, the one block, is left out');
  assert.ok((info.ram?.transferred ?? Infinity) < 4096, `RAM section bytes: ${info.ram?.transferred}`);
  await source.execute('migrate-continue', { state: 'pre-switchover' });
  const qemuErr = await dest.exited;
  assert.match(qemuErr, FERRY_CPU_REFUSED);
  assert.doesNotMatch(qemuErr, /capability|Mismatched GPAs|should not be migrated|Length mismatch|ramblock/i);
});
