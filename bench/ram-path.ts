// A micro-benchmark of the RAM handler on its own: setup + iterations over a stopped
// guest's RAM into a channel that drops everything (source), and the resulting stream
// loaded into fresh RAM (destination). Shows the engine's per-page cost apart from
// sockets and the other process.

import { RamHandler } from '../src/migration/ram.js';
import { RateLimiter } from '../src/migration/rate-limiter.js';
import { FakeDirtyLog } from '../src/migration/fake-vm.js';
import { StreamWriter } from '../src/stream/writer.js';
import { StreamReader } from '../src/stream/reader.js';
import type { Channel } from '../src/transport/channel.js';
import { HostMemory } from '../src/sys/host-memory.js';

const SIZE = Number(process.env['RAM_MIB'] ?? 256) * 1024 * 1024;

/**
 * RAM_GUEST=idle: never-touched RAM (all ZERO chunks, known zero without reading it).
 * RAM_GUEST=sparse: backed RAM with data in every other page, as a real guest's first
 * pass mixes pages of data with pages it zeroed (a ZERO chunk between every two pages).
 */
const GUEST = process.env['RAM_GUEST'] ?? 'sweep';
if (!['sweep', 'idle', 'sparse'].includes(GUEST)) throw new Error(`RAM_GUEST=${GUEST}: expected sweep, idle or sparse`);
const IDLE = GUEST === 'idle';
/** Every how many words a word of data is written: one per page, or one per two pages. */
const DATA_STRIDE = GUEST === 'sparse' ? 4096 : 1024;

function guestMemory(): HostMemory {
  const host = HostMemory.allocate(SIZE);
  if (IDLE) return host;
  host.populate(0, SIZE);
  const words = new Uint32Array(host.bytes.buffer, host.bytes.byteOffset, SIZE / 4);
  for (let i = 0; i < words.length; i += DATA_STRIDE) words[i] = i + 1;
  return host;
}

async function main(): Promise<void> {
  const src = guestMemory();
  let chunks: Uint8Array[] = [];
  let kept: Uint8Array[] = [];
  let sections = 0;
  let keptSections = 0;
  let keep = true;
  const sink: Channel = {
    description: 'sink',
    read: async () => null,
    write: async (data, done) => {
      if (keep) chunks.push(data);
      else done?.();
    },
    end: async () => {},
    destroy: () => {},
  };
  const memory = [{ idstr: 'pc.ram', guestAddress: 0, size: SIZE, bytes: src.bytes, residency: () => src.residency() }];
  const vm = { memory, dirtyLog: new FakeDirtyLog(memory) };
  const now = () => performance.now();
  for (const run of ['keep', 'drop'] as const) {
    keep = run === 'keep';
    chunks.length = 0;
    const ram = new RamHandler(vm as never, { now, limiter: new RateLimiter(now, 0) });
    const w = new StreamWriter(sink);
    const t0 = now();
    await ram.setup(w);
    sections = 1;
    while (ram.pending() > 0) {
      await ram.iterate(w);
      sections++;
    }
    await w.flush();
    if (run === 'keep') {
      kept = chunks;
      keptSections = sections;
    }
    chunks = [];
    const ms = now() - t0;
    console.log(`source (${run === 'keep' ? 'fresh buffers' : 'reused buffers'}): ${(SIZE / 1e6 / (ms / 1000)).toFixed(0)} MB/s (${ms.toFixed(0)} ms for ${SIZE / 1048576} MiB)`);
    console.log(`  pages ${ram.stats.normal} whole, ${ram.stats.duplicate} zero, ${sections} sections`);
    ram.cleanup();
  }
  // Destination: the same stream into fresh memory, as a receiving ferry does.
  for (const mode of ['faults', 'bulk', 'prealloc'] as const) {
    const populate = mode !== 'faults';
    const dst = HostMemory.allocate(SIZE, { prealloc: mode === 'prealloc' });
    // As an accelerator makes it for an incoming VM (fresh zero), less populating in the first mode.
    const { populate: _p, populateInBackground: _b, ...unpopulated } = dst.block('pc.ram', 0, { freshZero: true });
    const dstMemory = [populate ? dst.block('pc.ram', 0, { freshZero: true }) : unpopulated];
    const dstVm = { memory: dstMemory, dirtyLog: new FakeDirtyLog(dstMemory) };
    let next = 0;
    const source: Channel = {
      description: 'stream', read: async () => kept[next++] ?? null, write: async () => {}, end: async () => {}, destroy: () => {},
    };
    const r = new StreamReader(source);
    const ram = new RamHandler(dstVm as never, { now, limiter: new RateLimiter(now, 0) });
    const t0 = now();
    for (let i = 0; i < keptSections; i++) await ram.load(r, 4, 'ram');
    const ms = now() - t0;
    console.log(`destination (${mode === 'prealloc' ? 'memory backed before (--mem-prealloc)' : populate ? 'regions backed in bulk' : 'page faults one by one'}): ${(SIZE / 1e6 / (ms / 1000)).toFixed(0)} MB/s (${ms.toFixed(0)} ms)`);
    const a = new Uint32Array(src.bytes.buffer, src.bytes.byteOffset, SIZE / 4);
    const b = new Uint32Array(dst.bytes.buffer, dst.bytes.byteOffset, SIZE / 4);
    for (let i = 0; i < a.length; i += 1024) if (a[i] !== b[i]) throw new Error(`mismatch at word ${i}: ${a[i]} vs ${b[i]}; next ${a[i+1024]} vs ${b[i+1024]}`);
    dst.release();
  }
}
await main();
