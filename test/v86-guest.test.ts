// The v86 accelerator with the real Linux guest: boot to the heartbeat, a shell on the
// serial console, the dirty log while Linux runs, and an in-process migration to a second
// accelerator through the VMState engine (state section) plus a RAM copy. One boot.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  createV86AcceleratorInstance, linuxGuestAvailable, linuxGuestDir, V86_STATE_IDSTR,
} from '../src/v86/v86-accelerator.js';
import type { V86Accelerator } from '../src/v86/v86-accelerator.js';
import type { AcceleratorConfig, IoBus } from '../src/hypervisor/types.js';
import { PAGE_SIZE } from '../src/hypervisor/types.js';
import { vmstateLoad, vmstateSave } from '../src/migration/vmstate.js';
import { readerOf, writtenBytes } from '../src/stream/testing.js';

const MEMORY = 128 * 1024 * 1024;
const skip = linuxGuestAvailable() ? false : `no Linux guest in ${linuxGuestDir()}: run \`sudo sh scripts/setup-linux-guest.sh\``;

const noIo: IoBus = {
  pioRead: () => 0xff, pioWrite: () => {}, mmioRead: () => 0, mmioWrite: () => {},
};

function config(incoming: boolean): AcceleratorConfig {
  return { memorySize: MEMORY, vcpus: 1, guest: { kind: 'idle' }, ioBus: noIo, incoming };
}

/** Everything a console received, as text, with waiting for a pattern. */
class ConsoleLog {
  text = '';
  #waiters: (() => void)[] = [];
  write(bytes: Uint8Array): void {
    this.text += Buffer.from(bytes).toString('latin1');
    for (const w of this.#waiters.splice(0)) w();
  }
  async waitFor(pattern: RegExp, timeoutMs: number, from = 0): Promise<RegExpExecArray> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const match = pattern.exec(this.text.slice(from));
      if (match) return match;
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`console did not show ${pattern} within ${timeoutMs} ms; last output: ${JSON.stringify(this.text.slice(-400))}`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, Math.min(left, 1000));
        this.#waiters.push(() => { clearTimeout(timer); resolve(); });
      });
    }
  }
}

function lastHeartbeat(text: string): number {
  const all = [...text.matchAll(/heartbeat (\d+)/g)];
  return all.length === 0 ? 0 : Number(all[all.length - 1]![1]);
}

let source: V86Accelerator | undefined;
let destination: V86Accelerator | undefined;
const sourceLog = new ConsoleLog();
let sourceInput: { input(bytes: Uint8Array): void } | undefined;
let bootMs = 0;

/** Type a command line and wait for a marker the shell computes (so the echoed command cannot match). */
async function run(log: ConsoleLog, input: { input(bytes: Uint8Array): void }, command: string, timeoutMs = 30_000): Promise<string> {
  const id = Math.floor(Math.random() * 1e6);
  const from = log.text.length;
  input.input(new TextEncoder().encode(`${command}; echo END-$((${id}+1))\n`));
  const match = await log.waitFor(new RegExp(`END-${id + 1}`), timeoutMs, from);
  return log.text.slice(from, from + match.index);
}

before(async () => {
  if (skip) return;
  const t0 = performance.now();
  source = await createV86AcceleratorInstance(config(false));
  sourceInput = source.connectConsole(sourceLog);
  assert.equal(source.running, false, 'a new accelerator waits for resume()');
  source.resume();
  await sourceLog.waitFor(/heartbeat 2\b/, 180_000);
  bootMs = performance.now() - t0;
  console.log(`# v86 boot to "heartbeat 2": ${(bootMs / 1000).toFixed(1)} s`);
});

after(async () => {
  await source?.destroy();
  await destination?.destroy();
});

test('boots Debian\'s kernel to the heartbeat, and the console runs shell commands', { skip }, async () => {
  assert.ok(source!.running);
  // v86's JIT grows its wasm memory during boot, detaching views made before: the block
  // must hand out a live view over the same guest RAM.
  assert.equal(source!.memory[0]!.bytes.byteLength, MEMORY);
  assert.match(sourceLog.text, /Linux version \d+\.\d+/);
  assert.match(sourceLog.text, /ferry-guest: init up/);
  await run(sourceLog, sourceInput!, 'echo hi > /tmp/x');
  const out = await run(sourceLog, sourceInput!, 'cat /tmp/x');
  assert.match(out, /\nhi\r?\n/, `cat /tmp/x printed ${JSON.stringify(out)}`);
});

test('dirty log while Linux runs: every page whose content changed is reported', { skip }, async () => {
  const acc = source!;
  const ram = (): Uint8Array => acc.memory[0]!.bytes;
  acc.dirtyLog.start();
  // sync() and the copies below run between emulator bursts: one consistent instant each.
  let before = ram().slice();
  for (let round = 0; round < 3; round++) {
    if (round === 1) {
      // Non-zero data: tmpfs takes free pages, which are often zero already.
      await run(sourceLog, sourceInput!, 'for i in 1 2 3 4; do cat /bin/busybox > /tmp/fill$i; done', 60_000);
    } else {
      await new Promise((r) => setTimeout(r, 1500));
    }
    const bitmap = acc.dirtyLog.sync()[0]!;
    const now = ram().slice();
    let changed = 0;
    let reported = 0;
    for (let page = 0; page < MEMORY / PAGE_SIZE; page++) {
      const bit = (bitmap[page >>> 5]! >>> (page & 31)) & 1;
      reported += bit;
      const off = page * PAGE_SIZE;
      if (Buffer.compare(before.subarray(off, off + PAGE_SIZE), now.subarray(off, off + PAGE_SIZE)) !== 0) {
        changed++;
        assert.equal(bit, 1, `round ${round}: page ${page} changed but was not reported`);
      }
    }
    assert.ok(changed > 0, `round ${round}: a running Linux guest changed no page`);
    if (round === 1) assert.ok(changed >= 2048, `round 1 copied busybox 4 times into tmpfs but only ${changed} pages changed`);
    // Reported but unchanged: pages that changed and changed back (A → B → A) within the round.
    assert.ok(reported - changed < changed + 1000, `round ${round}: ${reported} reported for ${changed} changed`);
    console.log(`# round ${round}: ${changed} pages changed, ${reported} reported, ${acc.dirtyLog.stats.collects} collects`);
    before = now;
  }
  acc.dirtyLog.stop();
  await run(sourceLog, sourceInput!, 'rm /tmp/fill*');
});

test('auto-converge throttle: a CPU-bound shell loop takes several times longer at 75 %, and is back to speed at 0', { skip }, async () => {
  const acc = source!;
  const loop = async (): Promise<number> => {
    const t0 = performance.now();
    await run(sourceLog, sourceInput!, 'i=0; while [ $i -lt 4000 ]; do i=$((i+1)); done', 60_000);
    return performance.now() - t0;
  };
  await loop(); // v86's JIT compiles the loop the first time round
  // The better of two: a busy two-core machine slows a single run by half at times.
  const free = Math.min(await loop(), await loop());
  acc.setThrottle(75);
  const throttled = await loop();
  acc.setThrottle(0);
  const again = await loop();
  console.log(`# shell loop: ${free.toFixed(0)} ms free, ${throttled.toFixed(0)} ms at 75 %, ${again.toFixed(0)} ms after`);
  // Running a quarter of the time: ~4 times as long, with room for a noisy machine.
  assert.ok(throttled > free * 2, `${throttled.toFixed(0)} ms throttled against ${free.toFixed(0)} ms free`);
  assert.ok(again < throttled / 1.5, `${again.toFixed(0)} ms after the throttle was lifted, ${throttled.toFixed(0)} ms throttled`);
  assert.throws(() => acc.setThrottle(-1), /Cannot throttle the v86 guest to -1 %/);
});

test('migrates in-process: the heartbeat continues from its number, /tmp/x survives, uptime grows', { skip }, async () => {
  const src = source!;
  const uptimeBefore = Number(/([\d.]+) [\d.]+/.exec(await run(sourceLog, sourceInput!, 'cat /proc/uptime'))![1]);
  const tPause = performance.now();
  await src.pause();
  const pauseMs = performance.now() - tPause;
  assert.equal(src.running, false);
  // One slice at most; a slice that compiles a hot block can take ~200 ms on a busy host.
  assert.ok(pauseMs < 500, `pause took ${pauseMs.toFixed(0)} ms`);
  const beatAtPause = lastHeartbeat(sourceLog.text);
  const section = src.stateSections.find((s) => s.idstr === V86_STATE_IDSTR)!;

  const t0 = performance.now();
  const value = section.save();
  const saveMs = performance.now() - t0;
  const bytes = await writtenBytes((w) => { vmstateSave(w, section.description, value, { idstr: section.idstr, instanceId: 0 }); });
  assert.ok(bytes.byteLength < 4 * 1024 * 1024, `the memory-less state is ${bytes.byteLength} bytes`);

  destination = await createV86AcceleratorInstance(config(true));
  const destLog = new ConsoleLog();
  const destInput = destination.connectConsole(destLog);
  destination.memory[0]!.bytes.set(src.memory[0]!.bytes); // what the RAM handler does, page by page
  const loaded = await vmstateLoad(readerOf(bytes), section.description, section.description.version, section.idstr);
  const t1 = performance.now();
  destination.stateSections[0]!.load(loaded);
  const loadMs = performance.now() - t1;
  console.log(`# v86 state: ${bytes.byteLength} bytes in the stream, pause ${pauseMs.toFixed(1)} ms, save ${saveMs.toFixed(1)} ms, load ${loadMs.toFixed(1)} ms`);
  await src.destroy();
  source = undefined;

  destination.resume();
  const next = await destLog.waitFor(/heartbeat (\d+)/, 30_000);
  assert.equal(Number(next[1]), beatAtPause + 1, `the first heartbeat after the move is ${next[1]}; the source stopped at ${beatAtPause}`);
  await destLog.waitFor(new RegExp(`heartbeat ${beatAtPause + 3}\\b`), 30_000);
  const out = await run(destLog, destInput, 'cat /tmp/x');
  assert.match(out, /\nhi\r?\n/, `cat /tmp/x on the destination printed ${JSON.stringify(out)}`);
  const uptimeAfter = Number(/([\d.]+) [\d.]+/.exec(await run(destLog, destInput, 'cat /proc/uptime'))![1]);
  assert.ok(uptimeAfter > uptimeBefore + 1, `uptime went from ${uptimeBefore} to ${uptimeAfter}`);
});

test('the destination refuses a state from a different RAM size, or one carrying RAM', { skip }, async () => {
  const dest = destination!;
  await dest.pause();
  const section = dest.stateSections[0]!;
  const good = section.save();
  assert.throws(() => section.load({ ...good, memory_size: MEMORY * 2 }), /guest RAM is .* here/);
  assert.throws(() => section.load({ ...good, v86_release: new TextEncoder().encode('0.5.1') }), /comes from v86 0\.5\.1/);
  const state = (good['state'] as Uint8Array).slice();
  state[0] = 0;
  assert.throws(() => section.load({ ...good, state }), /bad magic/);
  section.load(good); // and the real one still loads
});

test('a load that rebases v86 timers by ±30 s (a source process whose clock started earlier or later) keeps the guest ticking', { skip }, async () => {
  const dest = destination!;
  const log = new ConsoleLog();
  dest.connectConsole(log);
  const section = dest.stateSections[0]!;
  for (const shiftUs of [-30_000_000n, 30_000_000n]) {
    await dest.pause();
    const value = section.save();
    // v86's PIT holds performance.now() readings: the load rebases them by the difference.
    section.load({ ...value, time_origin_us: (value['time_origin_us'] as bigint) + shiftUs });
    const from = log.text.length;
    dest.resume();
    // A whole line: a match on one still arriving ("heartbeat 1" of "heartbeat 15") waited
    // for "heartbeat 2", twenty beats behind.
    const first = await log.waitFor(/heartbeat (\d+)\r?\n/, 20_000, from);
    await log.waitFor(new RegExp(`heartbeat ${Number(first[1]) + 1}\\b`), 20_000, from);
  }
});
