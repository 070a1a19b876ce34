// Small helpers for tests of stream code (here and in other folders): write into memory
// and get the bytes back, read from bytes in chunks of a chosen size, and hex dumps.

import { channelFromBytes, createCollectingChannel } from './memory-channel.js';
import { StreamReader } from './reader.js';
import { StreamWriter } from './writer.js';

/** Run `fill` against a writer over memory and return every byte it wrote (after flush). */
export async function writtenBytes(fill: (w: StreamWriter) => void | Promise<void>, bufferSize = 64 * 1024): Promise<Uint8Array> {
  const channel = createCollectingChannel();
  const w = new StreamWriter(channel, { bufferSize });
  await fill(w);
  await w.close();
  return channel.bytes();
}

/** A reader over `bytes`, delivered in chunks of `chunkSize` (1 exercises every straddling read). */
export function readerOf(bytes: Uint8Array, chunkSize = 64 * 1024): StreamReader {
  return new StreamReader(channelFromBytes(bytes, { chunkSize }));
}

/** Bytes from a compact hex string; whitespace and `|` separators are ignored. */
export function fromHex(text: string): Uint8Array {
  const clean = text.replace(/[\s|]/g, '');
  if (clean.length % 2 !== 0) throw new Error(`fromHex: odd number of digits in "${text}"`);
  const out = new Uint8Array(clean.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(clean.slice(i * 2, i * 2 + 2), 16);
  return out;
}

export function toHex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

/** ASCII text as hex, for golden-byte tables. */
export function asciiHex(text: string): string {
  return toHex(new TextEncoder().encode(text));
}

/** mulberry32: a small seeded generator (0 ≤ x < 1), the same sequence on every machine — for fuzzers. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
