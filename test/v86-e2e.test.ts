// A running Linux guest (v86) moves between real Ferry processes: the serial console is
// usable on the destination with the same shell, files and heartbeat; RAM is equal on
// both sides; a cancelled migration and a killed destination leave the source running.
// One boot for the whole file: each case migrates the guest on from where the last left it.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ConsoleClient } from '../src/cli/console-client.js';
import { FerryProcess } from '../src/cli/ferry-process.js';
import { runMigration } from '../src/cli/migrate-command.js';
import { linuxGuestAvailable } from '../src/v86/v86-accelerator.js';

const SKIP = linuxGuestAvailable() ? false : 'the Linux guest is not built: run scripts/setup-linux-guest.sh (as root) first';
const ARGS = ['--accel', 'v86', '-m', '128M'];
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Vm { process: FerryProcess; console: ConsoleClient }

describe('v86: live migration of a running Linux guest between ferry processes', { skip: SKIP }, () => {
  let dir = '';
  const started: Vm[] = [];
  /** The VM the guest lives in now. */
  let current: Vm;

  async function startVm(name: string, extra: string[] = []): Promise<Vm> {
    const consolePath = join(dir, `${name}.console.sock`);
    const process = await FerryProcess.start({ dir, name, args: [...ARGS, ...extra], serial: `unix:${consolePath}`, startTimeoutMs: 120_000 });
    const console = await ConsoleClient.connect(consolePath);
    const vm = { process, console };
    started.push(vm);
    return vm;
  }

  function lastHeartbeat(vm: Vm): number {
    const all = [...vm.console.output.matchAll(/heartbeat (\d+)/g)];
    return all.length ? Number(all[all.length - 1]![1]) : -1;
  }

  /** The guest runs in `vm`: a heartbeat later than `after` shows up on its console. */
  async function heartbeatAfter(vm: Vm, previous: number): Promise<number> {
    const deadline = Date.now() + 60_000;
    while (lastHeartbeat(vm) <= previous) {
      if (Date.now() > deadline) assert.fail(`no heartbeat after ${previous}; console: ${JSON.stringify(vm.console.output.slice(-300))}`);
      await sleep(100);
    }
    return lastHeartbeat(vm);
  }

  async function uptime(vm: Vm): Promise<number> {
    vm.console.type('echo "up=$(cut -d" " -f1 /proc/uptime)"\n');
    const match = await vm.console.waitFor(/up=([\d.]+)/, 30_000);
    return Number(match[1]);
  }

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'ferry-v86-e2e-'));
    current = await startVm('boot');
    await current.console.waitFor(/heartbeat \d+/, 240_000);
    current.console.type('echo kept-across-moves > /tmp/x; echo "written=$(cat /tmp/x)"\n');
    await current.console.waitFor(/written=kept-across-moves/, 30_000);
  });

  after(async () => {
    for (const vm of started) {
      vm.console.close();
      await vm.process.quit();
    }
    rmSync(dir, { recursive: true, force: true });
  });

  test('cancel while active: the source guest keeps running, the destination fails cleanly', async () => {
    const dest = await startVm('cancelled', ['--incoming', 'tcp:127.0.0.1:0']);
    await current.process.execute('migrate-set-parameters', { 'max-bandwidth': 4 * 1024 * 1024 });
    await current.process.execute('migrate', { uri: await dest.process.incomingAddress() });
    await sleep(500);
    await current.process.execute('migrate_cancel');
    const deadline = Date.now() + 30_000;
    while ((await current.process.execute<{ status: string }>('query-migrate')).status !== 'cancelled') {
      if (Date.now() > deadline) assert.fail('the migration was not cancelled');
      await sleep(50);
    }
    assert.equal((await current.process.execute<{ status: string }>('query-status')).status, 'running');
    await heartbeatAfter(current, lastHeartbeat(current));
    assert.equal(await dest.process.exited, 1);
    assert.match(dest.process.stderr, /incoming migration failed/);
  });

  test('destination killed mid-stream: the source fails the migration and its guest runs on', async () => {
    const dest = await startVm('killed', ['--incoming', 'tcp:127.0.0.1:0']);
    await current.process.execute('migrate', { uri: await dest.process.incomingAddress() });
    await sleep(500);
    dest.process.kill();
    const deadline = Date.now() + 30_000;
    let info: { status: string; 'error-desc'?: string };
    while ((info = await current.process.execute('query-migrate')).status !== 'failed') {
      if (Date.now() > deadline) assert.fail(`migration still ${info.status}`);
      await sleep(50);
    }
    assert.ok(info['error-desc']);
    assert.equal((await current.process.execute<{ status: string }>('query-status')).status, 'running');
    await heartbeatAfter(current, lastHeartbeat(current));
  });

  for (const transport of ['tcp', 'unix'] as const) {
    test(`over ${transport}: same RAM on both sides, and the same shell, file, heartbeat and uptime after the move`, async () => {
      const uri = transport === 'tcp' ? 'tcp:127.0.0.1:0' : `unix:${join(dir, `mig-${started.length}.sock`)}`;
      // The unix case's destination also backs its RAM up front (--mem-prealloc).
      const dest = await startVm(`dest-${transport}`, ['-S', ...(transport === 'unix' ? ['--mem-prealloc'] : []), '--incoming', uri]);
      const source = current;
      await source.process.execute('migrate-set-parameters', { 'max-bandwidth': 0 });
      const upBefore = await uptime(source);
      const beatBefore = lastHeartbeat(source);
      const outcome = await runMigration(source.process.qmp, { qmp: source.process.qmpPath, uri: await dest.process.incomingAddress(), maxBandwidth: 0, progress: false });
      assert.equal(outcome.status, 'completed', outcome.info['error-desc']);
      assert.equal((await source.process.execute<{ status: string }>('query-status')).status, 'postmigrate');

      // Loaded and paused (-S): RAM equal to the source's at the switchover.
      let status = '';
      const deadline = Date.now() + 30_000;
      while ((status = (await dest.process.execute<{ status: string }>('query-status')).status) === 'inmigrate') {
        if (Date.now() > deadline) assert.fail('the destination did not finish loading');
        await sleep(50);
      }
      assert.equal(status, 'paused');
      const [a, b] = await Promise.all([source.process.execute('x-ferry-ram-digest'), dest.process.execute('x-ferry-ram-digest')]);
      assert.deepEqual(b, a, 'RAM differs between source and destination');
      await dest.process.execute('cont');
      current = dest;

      // The heartbeat continues from the source's count (it did not restart at 1).
      const beatAfter = await heartbeatAfter(dest, 0);
      assert.ok(beatAfter >= beatBefore, `heartbeat ${beatAfter} on the destination, ${beatBefore} on the source`);
      dest.console.type('echo "still=$(cat /tmp/x)"\n');
      await dest.console.waitFor(/still=kept-across-moves/, 30_000);
      const upAfter = await uptime(dest);
      assert.ok(upAfter > upBefore, `uptime ${upAfter} after the move, ${upBefore} before`);
    });
  }
});
