import { test } from 'node:test';
import assert from 'node:assert/strict';
import zlib from 'node:zlib';
import { randomBytes } from 'node:crypto';
import { packetCompressor, packetDecompressor, type MultifdCompression } from './multifd-compression.js';
import { zstdAvailable } from '../sys/zstd.js';

const PAGE = 4096;
const METHODS: MultifdCompression[] = ['zlib', 'zstd'];
const skipZstd = (m: MultifdCompression): string | false => (m === 'zstd' && !zstdAvailable() ? 'libzstd.so.1 did not load on this host' : false);

/** `count` pages of guest-like memory: some random, some text-like, some zero, some repeated. */
function pages(count: number, seed: number): Uint8Array {
  const out = new Uint8Array(count * PAGE);
  for (let p = 0; p < count; p++) {
    const page = out.subarray(p * PAGE, (p + 1) * PAGE);
    switch ((p + seed) % 4) {
      case 0: page.set(randomBytes(PAGE)); break;
      case 1: for (let i = 0; i < PAGE; i++) page[i] = 0x20 + ((i * 7 + p + seed) % 90); break;
      case 2: break;
      default: page.fill(p & 0xff);
    }
  }
  return out;
}

for (const method of METHODS) {
  test(`multifd-compression ${method}: packets queued back to back come out in order, each whole, and the channel's stream goes on across them`, { skip: skipZstd(method) }, async () => {
    const compressor = packetCompressor(method, 1);
    const decompressor = packetDecompressor(method);
    const inputs = Array.from({ length: 24 }, (_, i) => pages(1 + ((i * 37) % 128), i));
    // All queued at once, as the sender does while the thread pool works.
    const compressed = await Promise.all(inputs.map((p) => compressor.compress(p.slice())));
    let inBytes = 0;
    let outBytes = 0;
    for (const [i, data] of compressed.entries()) {
      inBytes += inputs[i]!.byteLength;
      outBytes += data.byteLength;
      const back = await decompressor.decompress(data, inputs[i]!.byteLength);
      assert.ok(Buffer.from(back).equals(Buffer.from(inputs[i]!)), `packet ${i} came back different`);
    }
    assert.ok(outBytes < inBytes * 0.6, `compressed ${inBytes} bytes to ${outBytes}`);
    if (method === 'zlib') {
      // One zlib stream with a sync flush after each packet, as QEMU's receiver inflates it:
      // the packets together, from the stream's start, inflate to every page in order.
      const whole = zlib.inflateSync(Buffer.concat(compressed), { finishFlush: zlib.constants.Z_SYNC_FLUSH });
      assert.ok(whole.equals(Buffer.concat(inputs)));
      // A packet is no stream of its own: the second cannot be inflated without the first.
      assert.throws(() => zlib.inflateSync(compressed[1]!, { finishFlush: zlib.constants.Z_SYNC_FLUSH }));
    }
    compressor.close();
    decompressor.close();
  });

  test(`multifd-compression ${method}: corrupt data, too many or too few bytes and a decompression bomb are refused, and the channel's later packets with them`, { skip: skipZstd(method) }, async () => {
    const compressor = packetCompressor(method, 1);
    const packet = pages(8, 3);
    const data = await compressor.compress(packet);
    const refuses = async (input: Uint8Array, expected: number, message: RegExp): Promise<void> => {
      const d = packetDecompressor(method);
      await assert.rejects(d.decompress(input, expected), message);
      // Out of step from here on: a good packet after it is refused too.
      await assert.rejects(d.decompress(data, packet.byteLength));
      d.close();
    };
    await refuses(data, packet.byteLength - PAGE, method === 'zlib' ? /made more than the 28672 bytes it holds/ : /packet size received more than 28672 size expected 28672/);
    await refuses(data, packet.byteLength + PAGE, /packet size received 32768 size expected 36864/);
    const corrupt = data.slice();
    for (let i = 0; i < corrupt.byteLength; i += 7) corrupt[i] = corrupt[i]! ^ 0x5a;
    await refuses(corrupt, packet.byteLength, new RegExp(`${method}: `));
    // 64 MiB of zeros in a few KiB: stopped at what the packet may hold, not inflated whole.
    const bomb = await packetCompressor(method, 1).compress(new Uint8Array(64 * 1024 * 1024));
    assert.ok(bomb.byteLength < 2 * 1024 * 1024, `${bomb.byteLength} bytes`);
    await refuses(bomb, 128 * PAGE, /more than/);
    compressor.close();
  });
}

test('multifd-compression: levels reach the compressor (zlib 9 makes less than zlib 0, which only stores)', async () => {
  const input = pages(64, 1);
  const stored = await packetCompressor('zlib', 0).compress(input.slice());
  const best = await packetCompressor('zlib', 9).compress(input.slice());
  assert.ok(stored.byteLength > input.byteLength, `level 0 stores: ${stored.byteLength}`);
  assert.ok(best.byteLength < input.byteLength * 0.6, `level 9: ${best.byteLength}`);
});
