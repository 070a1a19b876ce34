// The built-in guests under QEMU's TCG (no KVM needed): the 64-bit guest with exactly
// the memory Ferry's loader prepares — GDT, page tables, parameter block, code — entered
// the way Ferry enters it (testing/long-mode-trampoline.S), and the boot-sector variant
// the QEMU benchmark boots. Skips when qemu-system-x86_64 is absent.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadBuiltinGuest, readSweepImage } from './builtin.js';
import { checkSweepCounters, readGuestParams } from './params.js';

const QEMU = 'qemu-system-x86_64';
const BOOTSECTOR = fileURLToPath(new URL('../../guests/sweep-bootsector.bin', import.meta.url));
const TRAMPOLINE = fileURLToPath(new URL('../../guests/long-mode-trampoline.bin', import.meta.url));
const MEMORY = 32 * 1024 * 1024;

async function qmp(socketPath: string, commands: Array<Record<string, unknown>>): Promise<unknown[]> {
  const sock = connect(socketPath);
  const replies: unknown[] = [];
  let buffered = '';
  let greeted = false;
  const queue: Array<Record<string, unknown>> = [{ execute: 'qmp_capabilities' }, ...commands];
  return new Promise((resolve, reject) => {
    let quitting = false;
    // QEMU may reset the connection as it quits.
    sock.on('error', (err) => (quitting ? resolve(replies) : reject(err)));
    sock.on('close', () => resolve(replies));
    sock.on('data', (chunk) => {
      buffered += chunk.toString('utf8');
      let nl: number;
      while ((nl = buffered.indexOf('\n')) >= 0) {
        const msg = JSON.parse(buffered.slice(0, nl)) as Record<string, unknown>;
        buffered = buffered.slice(nl + 1);
        if ('QMP' in msg) greeted = true;
        else if ('return' in msg || 'error' in msg) replies.push(msg);
        else continue;
        const next = queue.shift();
        if (next && greeted) {
          if (next['execute'] === 'quit') quitting = true;
          sock.write(JSON.stringify(next) + '\n');
        }
        else if (!next) sock.end();
      }
    });
  });
}

test('the 64-bit sweep guest runs from the loader-prepared memory under QEMU TCG', async (t) => {
  if (spawnSync(QEMU, ['--version']).error) {
    t.skip(`needs ${QEMU} (apt-get install qemu-system-x86)`);
    return;
  }
  assert.ok(existsSync(TRAMPOLINE), `${TRAMPOLINE} is built by npm run build`);
  const dir = mkdtempSync(join(tmpdir(), 'ferry-longmode-'));
  try {
    const image = new Uint8Array(0x80000);
    loadBuiltinGuest(image, { kind: 'sweep', from: 0x100000, to: 0x800000, rate: undefined }, MEMORY, readSweepImage());
    writeFileSync(join(dir, 'image.bin'), image);
    const serialPath = join(dir, 'serial.txt');
    const qmpPath = join(dir, 'qmp.sock');
    const child = spawn(QEMU, [
      '-accel', 'tcg', '-m', '32', '-display', 'none', '-no-reboot',
      '-drive', `file=${TRAMPOLINE},format=raw`,
      '-device', `loader,file=${join(dir, 'image.bin')},addr=0x1000000,force-raw=on`,
      '-serial', `file:${serialPath}`, '-qmp', `unix:${qmpPath},server=on,wait=off`,
    ], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d) => { stderr += String(d); });
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    try {
      const serial = (): string => (existsSync(serialPath) ? readFileSync(serialPath, 'latin1') : '');
      const deadline = Date.now() + 60_000;
      while (!serial().includes('pass 3\n')) {
        if (child.exitCode !== null) assert.fail(`QEMU exited (${child.exitCode}) before pass 3: ${stderr} serial: ${JSON.stringify(serial())}`);
        if (Date.now() > deadline) assert.fail(`no "pass 3" within 60 s; serial: ${JSON.stringify(serial())}`);
        await new Promise((r) => setTimeout(r, 50));
      }
      const memPath = join(dir, 'mem.bin');
      await qmp(qmpPath, [{ execute: 'stop' }, { execute: 'pmemsave', arguments: { val: 0, size: MEMORY, filename: memPath } }, { execute: 'quit' }]);
      await exited;
      assert.match(serial(), /^pass 1\npass 2\npass 3\n/);
      const ram = new Uint8Array(readFileSync(memPath));
      const check = checkSweepCounters(ram);
      assert.ok(check.ok, check.problem);
      assert.ok(check.pass >= 3, `pass ${check.pass}`);
      t.diagnostic(`guest completed ${check.pass} passes over 7 MiB under TCG`);
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL');
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('the boot-sector sweep guest sweeps 1 MiB..end of RAM under QEMU and writes a byte per pass', async (t) => {
  if (spawnSync(QEMU, ['--version']).error) {
    t.skip(`needs ${QEMU} (apt-get install qemu-system-x86)`);
    return;
  }
  const dir = mkdtempSync(join(tmpdir(), 'ferry-bootsector-'));
  try {
    const serialPath = join(dir, 'serial.txt');
    const qmpPath = join(dir, 'qmp.sock');
    const child = spawn(QEMU, [
      '-accel', 'tcg', '-m', '32', '-display', 'none', '-no-reboot',
      '-drive', `file=${BOOTSECTOR},format=raw`,
      '-serial', `file:${serialPath}`, '-qmp', `unix:${qmpPath},server=on,wait=off`,
    ], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr!.setEncoding('utf8').on('data', (text: string) => (stderr += text));
    const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()));
    try {
      const serial = (): string => (existsSync(serialPath) ? readFileSync(serialPath, 'latin1') : '');
      const deadline = Date.now() + 60_000;
      while (serial().length < 3) {
        if (child.exitCode !== null) assert.fail(`QEMU exited (${child.exitCode}): ${stderr.trim()}; serial: ${JSON.stringify(serial())}`);
        if (Date.now() > deadline) assert.fail(`fewer than 3 passes within 60 s; serial: ${JSON.stringify(serial())}`);
        await new Promise((r) => setTimeout(r, 50));
      }
      const memPath = join(dir, 'mem.bin');
      await qmp(qmpPath, [{ execute: 'stop' }, { execute: 'pmemsave', arguments: { val: 0, size: MEMORY, filename: memPath } }, { execute: 'quit' }]);
      await exited;
      assert.match(serial(), /^B+$/);
      const ram = new Uint8Array(readFileSync(memPath));
      const check = checkSweepCounters(ram);
      assert.ok(check.ok, check.problem);
      assert.ok(check.pass >= 3);
      const params = readGuestParams(ram)!;
      assert.equal(params.from, 0x100000);
      // E801 reports RAM up to QEMU's ACPI tables, a little below 32 MiB.
      assert.ok(params.to > MEMORY - 1024 * 1024 && params.to <= MEMORY, `sweep ends at 0x${params.to.toString(16)}`);
      t.diagnostic(`${check.pass} passes over [0x100000, 0x${params.to.toString(16)})`);
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL');
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
