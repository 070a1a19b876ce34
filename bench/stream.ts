// Micro-benchmark of the stream layer alone: MB/s for encoding RAM pages (RamChunkWriter →
// StreamWriter → a channel that drops what it gets), decoding them (StreamReader →
// readRamChunks → guest RAM), and both at once through an in-memory channel pair.
// Usage: node dist/bench/stream.js [MiB=256] [runs=3]

import { channelFromBytes, createMemoryChannelPair } from '../src/stream/memory-channel.js';
import { RamChunkWriter, readRamChunks } from '../src/stream/ram-codec.js';
import type { RamChunkSink } from '../src/stream/ram-codec.js';
import { StreamReader } from '../src/stream/reader.js';
import { StreamWriter } from '../src/stream/writer.js';
import type { Channel } from '../src/transport/channel.js';

const PAGE = 4096;
const MIB = 1024 * 1024;

/** A channel that counts and drops, so encoding is measured without a consumer's cost. */
function discardChannel(): Channel & { received: number } {
  const ch = {
    description: 'memory:discard',
    received: 0,
    read: () => Promise.resolve(null),
    write: (data: Uint8Array) => {
      ch.received += data.byteLength;
      return Promise.resolve();
    },
    end: () => Promise.resolve(),
    destroy: () => undefined,
  };
  return ch;
}

/** Guest RAM with every page non-zero, so each goes as a whole PAGE chunk. */
function makeRam(bytes: number): Uint8Array {
  const ram = new Uint8Array(bytes);
  for (let i = 0; i < bytes; i += 512) ram[i] = (i >>> 9) | 1;
  return ram;
}

async function encodeAll(w: StreamWriter, ram: Uint8Array): Promise<void> {
  const chunks = new RamChunkWriter(w);
  chunks.memSize([{ idstr: 'pc.ram', size: ram.byteLength }]);
  for (let off = 0; off < ram.byteLength; off += PAGE) {
    chunks.page('pc.ram', off, ram.subarray(off, off + PAGE));
    if (w.needsFlush) await w.flush();
  }
  chunks.eos();
  await w.close();
}

function sinkInto(ram: Uint8Array): RamChunkSink {
  return {
    memSize: () => undefined,
    pageTarget: (_idstr, offset) => ({ ram, offset }),
    zero: (_idstr, offset, fill) => void ram.fill(fill, offset, offset + PAGE),
  };
}

function mbps(bytes: number, ms: number): number {
  return bytes / MIB / (ms / 1000);
}

function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

async function main(): Promise<void> {
  const mib = Number(process.argv[2] ?? 256);
  const runs = Number(process.argv[3] ?? 3);
  const size = mib * MIB;
  const src = makeRam(size);
  const dst = new Uint8Array(size);
  dst.fill(1); // fault the destination in first: measure the codec, not page faults

  // Pre-encode once for the decode-only runs.
  const collected: Uint8Array[] = [];
  const collector: Channel = {
    description: 'memory:collect',
    read: () => Promise.resolve(null),
    write: (d) => (collected.push(d), Promise.resolve()),
    end: () => Promise.resolve(),
    destroy: () => undefined,
  };
  await encodeAll(new StreamWriter(collector), src);
  const streamBytes = collected.reduce((n, c) => n + c.byteLength, 0);
  const encoded = new Uint8Array(streamBytes);
  let at = 0;
  for (const c of collected) {
    encoded.set(c, at);
    at += c.byteLength;
  }
  collected.length = 0;

  const results: Record<string, number[]> = { encode: [], decode: [], pipeline: [] };
  for (let run = 0; run < runs; run++) {
    let t0 = performance.now();
    const discard = discardChannel();
    await encodeAll(new StreamWriter(discard), src);
    results['encode']!.push(mbps(size, performance.now() - t0));

    t0 = performance.now();
    const r = new StreamReader(channelFromBytes(encoded, { chunkSize: MIB }));
    await readRamChunks(r, sinkInto(dst), 'ram');
    results['decode']!.push(mbps(size, performance.now() - t0));

    t0 = performance.now();
    const [a, b] = createMemoryChannelPair({ highWaterMark: 8 * MIB });
    const reader = new StreamReader(b);
    await Promise.all([encodeAll(new StreamWriter(a), src), readRamChunks(reader, sinkInto(dst), 'ram')]);
    results['pipeline']!.push(mbps(size, performance.now() - t0));
  }
  if (Buffer.compare(Buffer.from(src.buffer, src.byteOffset, size), Buffer.from(dst.buffer, dst.byteOffset, size)) !== 0) {
    throw new Error('bench/stream: decoded RAM differs from the source');
  }
  console.log(`stream codec, ${mib} MiB of 4 KiB pages (${streamBytes} stream bytes), ${runs} runs, median [min–max] MB/s:`);
  for (const [name, values] of Object.entries(results)) {
    const fmt = (v: number): string => v.toFixed(0);
    console.log(`  ${name.padEnd(9)} ${fmt(median(values)).padStart(6)}  [${fmt(Math.min(...values))}–${fmt(Math.max(...values))}]`);
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
