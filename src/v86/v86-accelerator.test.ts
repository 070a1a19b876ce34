// What createV86Accelerator refuses before it starts an emulator, with messages a user
// can act on, and the pinned v86 release check. (Booting is in test/v86-*.test.ts.)

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { checkV86Version, createV86Accelerator, V86_PINNED_VERSION, V86_STATE_DESCRIPTION } from './v86-accelerator.js';
import type { AcceleratorConfig } from '../hypervisor/types.js';
import { ConfigError } from '../errors.js';

const base: AcceleratorConfig = {
  memorySize: 128 * 1024 * 1024,
  vcpus: 1,
  guest: { kind: 'idle' },
  ioBus: { pioRead: () => 0, pioWrite: () => {}, mmioRead: () => 0, mmioWrite: () => {} },
  incoming: false,
};
const missing = { bios: '/nonexistent/bios.bin', vgaBios: '/nonexistent/vgabios.bin', kernel: '/nonexistent/vmlinuz', initrd: '/nonexistent/initrd' };

test('the installed v86 is the pinned release', () => {
  assert.equal(checkV86Version(), V86_PINNED_VERSION);
});

test('missing guest files: the error names the file and the setup script', async () => {
  await assert.rejects(createV86Accelerator(base, { files: missing }), (err: unknown) =>
    err instanceof ConfigError && /the BIOS \/nonexistent\/bios\.bin is missing/.test(err.message) && /setup-linux-guest\.sh/.test(err.message));
});

test('refuses more than one vCPU and RAM sizes v86 cannot make', async () => {
  await assert.rejects(createV86Accelerator({ ...base, vcpus: 2 }, { files: missing }), /with 2 vCPUs: v86 emulates one/);
  await assert.rejects(createV86Accelerator({ ...base, memorySize: 128 * 1024 * 1024 + 4096 }, { files: missing }), /multiple of 128 KiB/);
  await assert.rejects(createV86Accelerator({ ...base, memorySize: 2 ** 31 }, { files: missing }), /up to/);
});

test('the state section caps its buffer and carries the fields a destination checks first', () => {
  const names = V86_STATE_DESCRIPTION.fields.map((f) => f.name);
  assert.deepEqual(names, ['state_version', 'v86_release', 'memory_size', 'time_origin_us', 'state_length', 'state']);
  const state = V86_STATE_DESCRIPTION.fields.find((f) => f.name === 'state')!;
  assert.equal(state.lengthField, 'state_length');
  assert.ok(state.maxLength !== undefined && state.maxLength <= 16 * 1024 * 1024);
});
