import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ConfigError, KvmUnavailableError } from '../errors.js';
import { parseGuestSpec } from '../guests/spec.js';
import { MAX_MEMORY, createKvmAccelerator, kvmAvailable } from './kvm-accelerator.js';
import type { AcceleratorConfig, IoBus } from './types.js';

const bus: IoBus = { pioRead: () => 0, pioWrite: () => {}, mmioRead: () => 0, mmioWrite: () => {} };
const config = (over: Partial<AcceleratorConfig>): AcceleratorConfig => ({
  memorySize: 16 << 20, vcpus: 1, guest: parseGuestSpec('builtin:sweep'), ioBus: bus, incoming: false, ...over,
});

test('configuration errors are reported before KVM is touched', async () => {
  await assert.rejects(createKvmAccelerator(config({ memorySize: 1000 })), (e: unknown) => e instanceof ConfigError && /multiple of 4096/.test(e.message));
  await assert.rejects(createKvmAccelerator(config({ memorySize: MAX_MEMORY + 4096 })), ConfigError);
  await assert.rejects(createKvmAccelerator(config({ vcpus: 0 })), /Invalid vCPU count 0/);
});

test('without usable KVM, creation fails with the same one-line reason kvmAvailable() gives', async (t) => {
  const probe = kvmAvailable();
  if (probe.ok) {
    const acc = await createKvmAccelerator(config({}));
    assert.equal(acc.kind, 'kvm');
    await acc.destroy();
    return;
  }
  t.diagnostic(probe.reason);
  await assert.rejects(createKvmAccelerator(config({})), (e: unknown) => e instanceof KvmUnavailableError && e.message === probe.reason);
});
