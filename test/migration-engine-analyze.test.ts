// A whole stream as the engine writes it (RAM over several passes, globalstate, CPU and
// device sections, vmdesc) decodes with QEMU 7.2's own scripts/analyze-migration.py.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createCollectingChannel } from '../src/stream/memory-channel.js';
import { makeSide } from './migration-engine-helpers.js';

// dist/test/x.test.js → the repository root
const ROOT = resolve(fileURLToPath(import.meta.url), '..', '..', '..');
const SCRIPT = join(ROOT, '.cache', 'qemu-scripts', 'analyze-migration.py');
const SKIP = existsSync(SCRIPT) ? false : "QEMU's analyze-migration.py not fetched: run scripts/fetch-qemu-scripts.sh first";

test('analyze-migration.py decodes an engine-written stream of a dirtying guest', { skip: SKIP }, async (t) => {
  const sink = createCollectingChannel();
  const src = makeSide({ memorySize: 1024 * 1024 }, { connect: async () => sink });
  src.vm.fillPages(1, 40);
  src.vm.cpu.state = { rip: 0xfff0n, flags: 0x202, regs: new Uint8Array(16).fill(0xab), halted: true };
  src.vm.serial.state = { ier: 1, lcr: 3, divider: 12 };
  src.vm.startSyncWorkload(16);
  t.after(() => src.vm.stopWorkload());
  src.migration.setParameters({ 'downtime-limit': 0 });
  src.migration.migrate('memory:');
  await new Promise((r) => setTimeout(r, 100));
  src.vm.stop(); // lets it converge; globalstate then says "paused"
  await src.migration.whenSettled();
  assert.equal(src.migration.status, 'completed');
  assert.ok((src.migration.queryMigrate().ram?.['dirty-sync-count'] ?? 0) >= 3, 'several passes in the stream');

  const dir = mkdtempSync(join(tmpdir(), 'ferry-analyze-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'stream.bin');
  writeFileSync(file, sink.bytes());
  const run = spawnSync('python3', [SCRIPT, '-f', file], { encoding: 'utf8', timeout: 60_000 });
  assert.equal(run.status, 0, run.stderr);
  const decoded = JSON.parse(run.stdout) as Record<string, Record<string, unknown>>;
  // In stream order; the ids are the sections' (the global state 0, RAM 1: migration.ts).
  assert.deepEqual(Object.keys(decoded), ['ram (1)', 'globalstate (0)', 'fake-cpu (2)', 'fake-serial (3)']);
  assert.deepEqual(decoded['ram (1)'], { 'section sizes': { 'pc.ram': '0x0000000000100000' } });
  const runstate = String(decoded['globalstate (0)']!['runstate']).split(' ').slice(0, 7).map((h) => parseInt(h, 16));
  assert.equal(Buffer.from(runstate).toString('latin1'), 'paused\0');
  assert.equal(decoded['fake-cpu (2)']!['rip'], '0x000000000000fff0');
  assert.equal(decoded['fake-cpu (2)']!['halted'], true);
  assert.deepEqual(decoded['fake-serial (3)'], { ier: '0x01', lcr: '0x03', divider: '0x000c' });
});
