// The vCPU thread protocol (mailbox, IO order, HLT, pause, crash reports) with the real
// run loop over a scripted KVM_RUN (testing/fake-vcpu-worker.ts): runs on any host.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { GuestCrashError } from '../errors.js';
import type { IoBus } from '../hypervisor/types.js';
import { KvmRunView, SEGMENT_NAMES, zeroRegs } from './structs.js';
import type { KvmSregs } from './structs.js';
import { VcpuThread } from './vcpu-thread.js';
import type { VcpuExit } from './vcpu-thread.js';
import type { FakeStep } from './testing/fake-vcpu-worker.js';
import * as M from './vcpu-mailbox.js';
import { prestartWorker, takePrestartedWorker } from '../sys/early-worker.js';

const FAKE_WORKER = new URL('./testing/fake-vcpu-worker.js', import.meta.url);

function fakeSregs(): KvmSregs {
  const seg = { base: 0n, limit: 0xffff, selector: 0, type: 3, present: 1, dpl: 0, db: 0, s: 1, l: 0, g: 0, avl: 0, unusable: 0 };
  const s: Record<string, unknown> = Object.fromEntries(SEGMENT_NAMES.map((n) => [n, { ...seg }]));
  return {
    ...(s as Pick<KvmSregs, (typeof SEGMENT_NAMES)[number]>),
    gdt: { base: 0n, limit: 0 }, idt: { base: 0n, limit: 0 }, cr0: 0x60000010n, cr2: 0n, cr3: 0n, cr4: 0n, cr8: 0n,
    efer: 0n, apic_base: 0xfee00900n, interrupt_bitmap: [0n, 0n, 0n, 0n],
  };
}

function setup(script: FakeStep[]): { thread: VcpuThread; log: string[]; exits: VcpuExit[]; progress: Int32Array } {
  const runPage = new SharedArrayBuffer(4096);
  const progressBuf = new SharedArrayBuffer(4);
  const log: string[] = [];
  const exits: VcpuExit[] = [];
  const bus: IoBus = {
    pioRead: (port, size) => { log.push(`in ${port.toString(16)}/${size}`); return 0x5a; },
    pioWrite: (port, size, value) => { log.push(`out ${port.toString(16)}/${size}=${value.toString(16)}`); },
    mmioRead: (address, size) => { log.push(`mmio-read ${address.toString(16)}/${size}`); return 0x1234567; },
    mmioWrite: (address, size, value) => { log.push(`mmio-write ${address.toString(16)}/${size}=${value.toString(16)}`); },
  };
  const handle = {
    id: 0, fd: -1, runMapping: { length: 4096 }, run: new KvmRunView(new Uint8Array(runPage)),
    getRegs: () => ({ ...zeroRegs(), rip: 0x10042n }), getSregs: fakeSregs,
  };
  const thread = new VcpuThread(handle, bus, (e) => exits.push(e), {
    workerUrl: FAKE_WORKER, extraWorkerData: { runPage, progress: progressBuf, script },
  });
  return { thread, log, exits, progress: new Int32Array(progressBuf) };
}

async function until(what: string, check: () => boolean, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 1));
  }
}

test('IO exits reach the IoBus in guest order; an IN is answered after earlier OUTs; HLT sleeps until kicked', async () => {
  const { thread, log, progress } = setup([
    { out: 0x3f8, size: 1, values: [0x68, 0x69] },
    { mmioWrite: 0xfee00000, len: 4, value: 0xdeadbeef },
    { in: 0x60, size: 1 },
    { echo: 0xe9 },
    { hlt: true },
  ]);
  try {
    await thread.ready();
    assert.equal(thread.state, M.STATE_PAUSED, 'a new vCPU waits to be resumed');
    thread.resume();
    await until('HLT', () => thread.state === M.STATE_HALTED);
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(Atomics.load(progress, 0), 0, 'a halted vCPU does not run');
    thread.kick();
    await until('the guest to run after the kick', () => Atomics.load(progress, 0) > 0);
    // Writes are posted: pause() is what guarantees they have all reached the bus.
    await thread.pause();
    assert.deepEqual(log, ['out 3f8/1=68', 'out 3f8/1=69', 'mmio-write fee00000/4=deadbeef', 'in 60/1', 'out e9/4=5a']);
  } finally {
    await thread.stop();
  }
  assert.equal(thread.state, M.STATE_STOPPED);
});

test('pause stops a guest that never exits within 10 ms, and resume continues it', async () => {
  const { thread, progress } = setup([]);
  try {
    await thread.ready();
    thread.resume();
    await until('progress', () => Atomics.load(progress, 0) > 1000);
    const times: number[] = [];
    for (let i = 0; i < 5; i++) {
      const t0 = performance.now();
      await thread.pause();
      times.push(performance.now() - t0);
      const frozen = Atomics.load(progress, 0);
      await new Promise((r) => setTimeout(r, 10));
      assert.equal(Atomics.load(progress, 0), frozen, 'no progress while paused');
      assert.equal(thread.vcpu.run.immediateExit, 0, 'immediate_exit is cleared once paused');
      thread.resume();
      await until('progress after resume', () => Atomics.load(progress, 0) > frozen);
    }
    times.sort((a, b) => a - b);
    // The 10 ms budget is checked on real KVM (test/kvm-run.test.ts). Here the stand-in
    // guest spins on one of two shared cores, so only the best case is held to it and
    // the median gets slack for a busy machine.
    assert.ok(times[0]! < 10, `fastest pause ${times[0]!.toFixed(2)} ms`);
    assert.ok(times[2]! < 50, `median pause ${times[2]!.toFixed(2)} ms`);
  } finally {
    await thread.stop();
  }
});

test('auto-converge throttle: a vCPU throttled to 90 % runs about a tenth of the time, pauses at once, and runs freely at 0', async () => {
  const { thread, progress } = setup([]);
  // Guest progress per 400 ms of wall time.
  const rate = async (): Promise<number> => {
    const before = Atomics.load(progress, 0);
    await new Promise((r) => setTimeout(r, 400));
    return Atomics.load(progress, 0) - before;
  };
  try {
    await thread.ready();
    thread.resume();
    await until('progress', () => Atomics.load(progress, 0) > 1000);
    // The better of two windows each way: the suite runs test files in parallel on two
    // cores, and a window that loses its core reads low (a free window at half speed once
    // made a working throttle read 46 %).
    const free = Math.max(await rate(), await rate());
    thread.setThrottle(90);
    const throttled = Math.min(await rate(), await rate());
    // 10 ms running in every 100: a tenth, with room for a busy two-core machine.
    assert.ok(throttled < free * 0.4, `throttled ${throttled} against ${free} unthrottled`);
    assert.ok(throttled > 0, 'a throttled vCPU still runs');
    // A throttled vCPU (asleep 90 ms of every 100) pauses as promptly as a running one: the
    // pause ends its sleep. Best of three, for a busy machine.
    const pauses: number[] = [];
    for (let i = 0; i < 3; i++) {
      const t0 = performance.now();
      await thread.pause();
      pauses.push(performance.now() - t0);
      thread.resume();
      await new Promise((r) => setTimeout(r, 30));
    }
    assert.ok(Math.min(...pauses) < 40, `pauses took ${pauses.map((p) => p.toFixed(1)).join(', ')} ms`);
    thread.setThrottle(0);
    // The better of two windows: a busy two-core machine can take a core away for one. On
    // CI the throttled window ran at up to 40 % of the free rate and the free one again at
    // 1.8x the throttled: "clearly faster" is the claim, not "as fast as before".
    const again = Math.max(await rate(), await rate());
    assert.ok(again > throttled * 1.3, `after the throttle was lifted ${again}, throttled ${throttled}`);
    assert.throws(() => thread.setThrottle(100), /Cannot throttle vCPU 0 to 100 %/);
  } finally {
    await thread.stop();
  }
});

test('a halted vCPU is taken as paused where it sleeps: its writes delivered, nothing run until resumed', async () => {
  const { thread, log } = setup([
    { out: 0x3f8, size: 1, values: [0x40] },
    { hlt: true },
    { out: 0x3f8, size: 1, values: [0x41] },
    { hlt: true },
  ]);
  try {
    await thread.ready();
    thread.resume();
    await until('HLT', () => thread.state === M.STATE_HALTED);
    await thread.pause();
    assert.equal(thread.pausesClaimed, 1, 'the halted vCPU was taken as it slept');
    assert.equal(thread.state, M.STATE_PAUSED);
    assert.equal(thread.vcpu.run.immediateExit, 0, 'immediate_exit is left clear');
    assert.deepEqual(log, ['out 3f8/1=40']);
    await new Promise((r) => setTimeout(r, 20));
    assert.deepEqual(log, ['out 3f8/1=40'], 'nothing ran while paused');
    thread.resume();
    await until('the guest to go on past its HLT', () => log.length === 2);
    assert.equal(log[1], 'out 3f8/1=41');
  } finally {
    await thread.stop();
  }
});

test('kicks racing pauses of a halted vCPU: every pause holds, claimed or waited for', async () => {
  // A guest that halts after every write: each kick lets it run one more step.
  const script: FakeStep[] = [];
  for (let i = 0; i < 400; i++) script.push({ out: 0x80, size: 1, values: [i & 0xff] }, { hlt: true });
  const { thread, log } = setup(script);
  try {
    await thread.ready();
    thread.resume();
    for (let i = 0; i < 150; i++) {
      thread.kick();
      await thread.pause();
      const seen = log.length;
      assert.equal(thread.state, M.STATE_PAUSED, `round ${i}`);
      // A kick while paused must not run it either.
      thread.kick();
      await new Promise((r) => setTimeout(r, 1));
      assert.equal(log.length, seen, `round ${i}: the vCPU ran while paused`);
      thread.resume();
      await until(`round ${i}: HLT`, () => thread.state === M.STATE_HALTED);
    }
    assert.ok(thread.pausesClaimed > 0, 'no pause found the vCPU halted');
    assert.deepEqual(log, log.map((_, i) => `out 80/1=${(i & 0xff).toString(16)}`), 'the writes arrived in order, none lost');
  } finally {
    await thread.stop();
  }
});

test('a pause requested while an IN is outstanding completes the IN first', async () => {
  const { thread, log } = setup([{ in: 0x61, size: 2 }, { echo: 0xe9 }]);
  try {
    await thread.ready();
    thread.resume();
    await until('the IN', () => log.includes('in 61/2'));
    await thread.pause();
    thread.resume();
    await until('the echo', () => log.includes('out e9/4=5a'));
  } finally {
    await thread.stop();
  }
});

test('an MMIO read above 4 GiB is answered through the IoBus; pause delivers every posted write first', async () => {
  const { thread, log } = setup([{ mmioRead: 0x1_0000_2000, len: 4 }, { echo: 0xe9 }, { hlt: true }]);
  try {
    await thread.ready();
    thread.resume();
    await until('HLT', () => thread.state === M.STATE_HALTED);
    await thread.pause();
    assert.deepEqual(log, ['mmio-read 100002000/4', 'out e9/4=1234567']);
  } finally {
    await thread.stop();
  }
});

test('stop() ends a worker that is halted, and one blocked on a read the bus answers', async () => {
  const halted = setup([{ hlt: true }]);
  await halted.thread.ready();
  halted.thread.resume();
  await until('HLT', () => halted.thread.state === M.STATE_HALTED);
  await halted.thread.stop();
  assert.equal(halted.thread.state, M.STATE_STOPPED);
  const spinning = setup([]);
  await spinning.thread.ready();
  spinning.thread.resume();
  await until('progress', () => Atomics.load(spinning.progress, 0) > 0);
  await spinning.thread.stop();
  assert.equal(spinning.thread.state, M.STATE_STOPPED);
});

test('a triple fault is reported through onExit as a GuestCrashError with a register dump', async () => {
  const { thread, exits } = setup([{ out: 0x3f8, size: 1, values: [0x41] }, { shutdown: true }]);
  try {
    await thread.ready();
    thread.resume();
    await until('the exit', () => exits.length > 0);
    const exit = exits[0]!;
    assert.equal(exit.kind, 'crash');
    assert.ok(exit.kind === 'crash' && exit.error instanceof GuestCrashError);
    assert.match(exit.error.message, /triple-faulted/);
    assert.match((exit.error as GuestCrashError).registerDump, /RIP\s*=0000000000010042/);
    await thread.pause();
  } finally {
    await thread.stop();
  }
});

test('a vCPU worker started with the process is taken by the first thread, gets its data by message, and runs the same', async () => {
  prestartWorker(FAKE_WORKER, { name: 'vcpu 0' });
  // Give it time to load its modules and wait, as it would while the VMM loads.
  await new Promise((r) => setTimeout(r, 200));
  const first = setup([{ out: 0x3f8, size: 1, values: [0x41] }, { hlt: true }]);
  const second = setup([{ out: 0x3f8, size: 1, values: [0x42] }, { hlt: true }]);
  try {
    assert.equal(first.thread.startedEarly, true, 'the first thread took the waiting worker');
    assert.equal(second.thread.startedEarly, false, 'the next one starts its own');
    assert.equal(takePrestartedWorker(FAKE_WORKER), undefined);
    for (const { thread } of [first, second]) {
      await thread.ready();
      thread.resume();
      await until('HLT', () => thread.state === M.STATE_HALTED);
      await thread.pause();
    }
    assert.deepEqual(first.log, ['out 3f8/1=41']);
    assert.deepEqual(second.log, ['out 3f8/1=42']);
  } finally {
    await first.thread.stop();
    await second.thread.stop();
  }
});
