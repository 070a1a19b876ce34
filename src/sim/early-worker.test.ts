import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PortIoBus } from '../machine/io-bus.js';
import { parseGuestSpec } from '../guests/spec.js';
import { createSimAccelerator } from './sim-accelerator.js';
import { WORKLOAD_WORKER_NAME, WORKLOAD_WORKER_URL } from './workload-worker-url.js';
import { prestartWorker, takePrestartedWorker } from '../sys/early-worker.js';

test('sim prestart: the accelerator takes the waiting worker, sends it its memory, and the workload runs', async () => {
  prestartWorker(WORKLOAD_WORKER_URL, { name: WORKLOAD_WORKER_NAME });
  prestartWorker(WORKLOAD_WORKER_URL, { name: WORKLOAD_WORKER_NAME }); // a second call keeps the first worker
  const ioBus = new PortIoBus();
  const accel = await createSimAccelerator({
    memorySize: 8 * 1024 * 1024, vcpus: 1, guest: parseGuestSpec('builtin:sweep,rate=200000'), ioBus, incoming: false,
  });
  try {
    assert.equal(takePrestartedWorker(WORKLOAD_WORKER_URL), undefined, 'the accelerator took it');
    accel.resume();
    const deadline = Date.now() + 10_000;
    while (accel.memory[0]!.bytes[1024 * 1024] === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    assert.ok(accel.memory[0]!.bytes[1024 * 1024]! > 0, 'the prestarted worker writes guest RAM');
    await accel.pause();
  } finally {
    await accel.destroy();
  }
});

test('sim prestart: with none waiting, take returns nothing and the accelerator starts its own', async () => {
  assert.equal(takePrestartedWorker(WORKLOAD_WORKER_URL), undefined);
  const accel = await createSimAccelerator({
    memorySize: 8 * 1024 * 1024, vcpus: 1, guest: parseGuestSpec('builtin:idle'), ioBus: new PortIoBus(), incoming: false,
  });
  await accel.destroy();
});
