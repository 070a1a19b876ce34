// Re-derives the golden values from this machine's kernel headers: compiles
// golden/kvm-golden.c and checks every number and offset it prints against the
// TypeScript tables. Skips where gcc or <linux/kvm.h> is missing (the fixed goldens in
// ioctls.test.ts and structs.test.ts still run there).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as K from './ioctls.js';
import { KVM_RUN_OFFSETS } from './structs.js';

const SOURCE = fileURLToPath(new URL('../../../src/kvm/golden/kvm-golden.c', import.meta.url));

/** kvm_run member paths in the C program → names in KVM_RUN_OFFSETS. */
const RUN_NAMES: Record<string, string> = {
  io: 'exit', 'io.direction': 'io_direction', 'io.size': 'io_size', 'io.port': 'io_port', 'io.count': 'io_count',
  'io.data_offset': 'io_data_offset', 'mmio.phys_addr': 'mmio_phys_addr', 'mmio.data': 'mmio_data', 'mmio.len': 'mmio_len',
  'mmio.is_write': 'mmio_is_write', 'fail_entry.hardware_entry_failure_reason': 'fail_entry_reason', 'fail_entry.cpu': 'fail_entry_cpu',
  'internal.suberror': 'internal_suberror', 'internal.ndata': 'internal_ndata', 'internal.data': 'internal_data',
  'system_event.type': 'system_event_type',
};

test('ioctl numbers, constants, sizes and kvm_run offsets match this machine\'s <linux/kvm.h>', (t) => {
  if (!existsSync('/usr/include/linux/kvm.h') || spawnSync('gcc', ['--version']).error) {
    t.skip('needs gcc and /usr/include/linux/kvm.h (apt-get install gcc linux-libc-dev)');
    return;
  }
  const dir = mkdtempSync(join(tmpdir(), 'ferry-golden-'));
  try {
    const exe = join(dir, 'kvm-golden');
    const cc = spawnSync('gcc', ['-o', exe, SOURCE], { encoding: 'utf8' });
    assert.equal(cc.status, 0, cc.stderr);
    const out = spawnSync(exe, { encoding: 'utf8' }).stdout;
    const table = K as unknown as Record<string, number>;
    const sizes = K.SIZEOF as Record<string, number>;
    const run = KVM_RUN_OFFSETS as Record<string, number>;
    let checked = 0;
    for (const line of out.split('\n')) {
      const num = /^ {2}([A-Z0-9_]+): (0x[0-9a-f]+),$/.exec(line);
      const layout = /^ {2}'([^']+)': (\d+),$/.exec(line);
      if (num) {
        assert.equal(table[num[1]!], Number(num[2]), num[1]);
      } else if (layout) {
        const [, key, value] = layout as unknown as [string, string, string];
        const sizeof = /^sizeof\(struct (\w+)\)$/.exec(key);
        if (sizeof) assert.equal(sizes[sizeof[1]!], Number(value), key);
        else if (key.startsWith('kvm_run.')) {
          const member = key.slice('kvm_run.'.length);
          assert.equal(run[RUN_NAMES[member] ?? member], Number(value), key);
        } else continue; // struct member offsets: covered field by field in structs.test.ts
      } else {
        continue;
      }
      checked++;
    }
    assert.ok(checked > 100, `checked ${checked} values`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
