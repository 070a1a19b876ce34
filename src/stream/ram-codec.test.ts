import { test } from 'node:test';
import assert from 'node:assert/strict';
import { FerryError, StreamFormatError, StreamTruncatedError } from '../errors.js';
import {
  RamChunkWriter, readRamChunks, xbzrleDecode, xbzrleEncode,
  RAM_SAVE_FLAG_CONTINUE, RAM_SAVE_FLAG_EOS, RAM_SAVE_FLAG_PAGE, RAM_SAVE_FLAG_ZERO,
} from './ram-codec.js';
import type { RamChunkSink, RamStreamState } from './ram-codec.js';
import { asciiHex, fromHex, readerOf, toHex, writtenBytes } from './testing.js';

const PAGE = 4096;

/** Compare long hex strings, reporting where they first differ instead of dumping pages. */
function assertHexEqual(actual: string, expected: string): void {
  if (actual === expected) return;
  let i = 0;
  while (i < actual.length && actual[i] === expected[i]) i++;
  assert.fail(`bytes differ at byte ${i >> 1} (lengths ${actual.length / 2} vs ${expected.length / 2}): ` +
    `got …${actual.slice(Math.max(0, i - 16), i + 32)}…, expected …${expected.slice(Math.max(0, i - 16), i + 32)}…`);
}

/** A sink over named blocks that records every call, and refuses unknown blocks/offsets. */
function recordingSink(blocks: Record<string, number>, withXbzrle = true) {
  const ram = new Map(Object.entries(blocks).map(([k, size]) => [k, new Uint8Array(size)]));
  const calls: string[] = [];
  const find = (idstr: string, offset: number): Uint8Array => {
    const b = ram.get(idstr);
    if (!b || offset % PAGE !== 0 || offset + PAGE > b.byteLength) throw new StreamFormatError(`no page ${idstr}@${offset}`, 0, 'ram');
    return b;
  };
  const sink: RamChunkSink = {
    memSize: (total, list) => calls.push(`mem ${total} ${list.map((b) => `${b.idstr}:${b.size}`).join(',')}`),
    pageTarget: (idstr, offset) => {
      calls.push(`page ${idstr} ${offset}`);
      return { ram: find(idstr, offset), offset };
    },
    zero: (idstr, offset, fill) => {
      calls.push(`zero ${idstr} ${offset} ${fill}`);
      find(idstr, offset).fill(fill, offset, offset + PAGE);
    },
  };
  if (withXbzrle) {
    sink.xbzrle = (idstr, offset, encoded) => {
      calls.push(`xbzrle ${idstr} ${offset} ${encoded.byteLength}`);
      xbzrleDecode(encoded, find(idstr, offset).subarray(offset, offset + PAGE));
    };
  }
  return { sink, calls, ram };
}

test('ram: MEM_SIZE chunk golden bytes', async () => {
  const bytes = await writtenBytes((w) => {
    const c = new RamChunkWriter(w);
    c.memSize([{ idstr: 'pc.ram', size: 0x200000 }, { idstr: 'vga.vram', size: 0x1000 }]);
    c.eos();
  });
  assert.equal(
    toHex(bytes),
    [
      '0000000000201004', // be64 total 0x201000 | RAM_SAVE_FLAG_MEM_SIZE
      '06', asciiHex('pc.ram'), '0000000000200000', // u8 len, idstr, be64 used length
      '08', asciiHex('vga.vram'), '0000000000001000',
      '0000000000000010', // be64 RAM_SAVE_FLAG_EOS
    ].join(''),
  );
  const { sink, calls } = recordingSink({});
  await readRamChunks(readerOf(bytes, 3), sink, 'ram');
  assert.deepEqual(calls, ['mem 2101248 pc.ram:2097152,vga.vram:4096']);
});

test('ram: MEM_SIZE with x-ignore-shared — each block\'s guest-physical address after its length (QEMU 7.2\'s block->mr->addr)', async () => {
  const bytes = await writtenBytes((w) => {
    const c = new RamChunkWriter(w);
    c.memSize([{ idstr: 'pc.ram', size: 0x200000, address: 0 }, { idstr: 'pc.ram.1', size: 0x1000, address: 2 ** 32 }]);
    c.eos();
  });
  assert.equal(
    toHex(bytes),
    [
      '0000000000201004',
      '06', asciiHex('pc.ram'), '0000000000200000', '0000000000000000',
      '08', asciiHex('pc.ram.1'), '0000000000001000', '0000000100000000',
      '0000000000000010',
    ].join(''),
  );
  const addresses: Array<number | undefined> = [];
  const sink: RamChunkSink = { ...recordingSink({}).sink, memSizeWithAddresses: true, memSize: (_, list) => addresses.push(...list.map((b) => b.address)) };
  await readRamChunks(readerOf(bytes, 3), sink, 'ram');
  assert.deepEqual(addresses, [0, 2 ** 32]);
  // Read by a sink that does not expect the addresses, the first one is taken for a block name: refused.
  await assert.rejects(readRamChunks(readerOf(bytes), recordingSink({}).sink, 'ram'), StreamFormatError);
});

test('ram: PAGE, ZERO and XBZRLE chunks golden bytes, with CONTINUE after the first chunk of a block', async () => {
  const page = new Uint8Array(PAGE).fill(0xaa);
  const encoded = fromHex('0a 02 1122');
  const bytes = await writtenBytes((w) => {
    const c = new RamChunkWriter(w);
    c.page('pc.ram', 0x3000, page);
    c.zero('pc.ram', 0x4000);
    c.xbzrle('pc.ram', 0x5000, encoded);
    c.zero('other', 0x1000);
    c.page('pc.ram', 0x0, page);
    c.eos();
  });
  const expected = [
    '0000000000003008', '06', asciiHex('pc.ram'), 'aa'.repeat(PAGE), // offset 0x3000 | PAGE, idstr, 4096 bytes
    '0000000000004022', '00', // offset 0x4000 | ZERO | CONTINUE, fill byte 0
    '0000000000005060', '01', '0004', '0a021122', // offset | XBZRLE | CONTINUE, ENCODING_FLAG_XBZRLE, be16 len, delta
    '0000000000001002', '05', asciiHex('other'), '00', // another block: idstr again, no CONTINUE
    '0000000000000008', '06', asciiHex('pc.ram'), 'aa'.repeat(PAGE), // back to pc.ram: named again
    '0000000000000010', // EOS
  ].join('');
  assertHexEqual(toHex(bytes), expected);
  const { sink, calls, ram } = recordingSink({ 'pc.ram': 0x8000, other: 0x2000 });
  ram.get('pc.ram')!.fill(0x55, 0x5000, 0x6000);
  await readRamChunks(readerOf(bytes, 1000), sink, 'ram');
  assert.deepEqual(calls, ['page pc.ram 12288', 'zero pc.ram 16384 0', 'xbzrle pc.ram 20480 4', 'zero other 4096 0', 'page pc.ram 0']);
  const pc = ram.get('pc.ram')!;
  assert.ok(pc.subarray(0x3000, 0x4000).every((b) => b === 0xaa));
  assert.equal(pc[0x5000 + 10], 0x11);
  assert.equal(pc[0x5000 + 11], 0x22);
  assert.equal(pc[0x5000 + 12], 0x55);
});

test('ram: eos() forgets the last block, so the next section names it again', async () => {
  const bytes = await writtenBytes((w) => {
    const c = new RamChunkWriter(w);
    c.zero('pc.ram', 0);
    c.eos();
    c.zero('pc.ram', 0x1000);
    c.eos();
  });
  assert.equal(
    toHex(bytes),
    ['0000000000000002', '06', asciiHex('pc.ram'), '00', '0000000000000010', '0000000000001002', '06', asciiHex('pc.ram'), '00', '0000000000000010'].join(''),
  );
});

test('ram: round trip of many pages through small chunks lands every byte in place', async () => {
  const src = new Uint8Array(64 * PAGE);
  for (let i = 0; i < src.length; i += 97) src[i] = (i * 13) & 0xff;
  src.fill(0, 10 * PAGE, 12 * PAGE);
  const bytes = await writtenBytes((w) => {
    const c = new RamChunkWriter(w);
    c.memSize([{ idstr: 'pc.ram', size: src.length }]);
    c.eos();
    for (let p = 0; p < 64; p++) {
      const data = src.subarray(p * PAGE, (p + 1) * PAGE);
      if (data.every((b) => b === 0)) c.zero('pc.ram', p * PAGE);
      else c.page('pc.ram', p * PAGE, data);
    }
    c.eos();
  }, 5000);
  const { sink, ram } = recordingSink({ 'pc.ram': src.length });
  ram.get('pc.ram')!.fill(0x77);
  const r = readerOf(bytes, 777);
  await readRamChunks(r, sink, 'ram');
  await readRamChunks(r, sink, 'ram');
  assert.equal(await r.atEnd(), true);
  assert.deepEqual(ram.get('pc.ram'), src);
});

test('ram: unknown and unsupported flags are refused with the offset', async () => {
  const cases: Array<[string, RegExp]> = [
    ['0000000000000080', /HOOK/],
    ['0000000000000100', /COMPRESS_PAGE/],
    ['0000000000000200', /MULTIFD_FLUSH/],
    ['0000000000000001', /Unknown RAM flags 0x001/],
    ['000000000000000a', /Unknown RAM flags 0x00a/], // PAGE|ZERO together
    ['0000000000000030', /CONTINUE without a page/], // EOS|CONTINUE
    ['0000000000000028', /CONTINUE but no block/],
    ['0000000000001002 00', /empty idstr/],
    ['0000000000001040 05 706372616d 02 0001 00', /encoding 0x02/],
    ['0000000000001040 05 706372616d 01 1001', /length 4097/],
    [`0000000000002004 06 ${asciiHex('pc.ram')} 0000000000003000`, /exceeds the 8192 bytes left/],
    ['ffffffffffff0008', /beyond 2\^53/],
  ];
  for (const [hex, message] of cases) {
    const { sink } = recordingSink({ 'pc.ram': 0x10000 });
    await assert.rejects(readRamChunks(readerOf(fromHex(hex)), sink, 'ram'), (e: unknown) => {
      assert.ok(e instanceof StreamFormatError, `${hex}: ${String(e)}`);
      assert.match(e.message, message, hex);
      assert.equal(e.section, 'ram');
      return true;
    });
  }
});

test('ram: an XBZRLE page without an XBZRLE-capable sink is refused', async () => {
  const bytes = await writtenBytes((w) => new RamChunkWriter(w).xbzrle('pc.ram', 0, fromHex('0001ff')));
  const { sink } = recordingSink({ 'pc.ram': PAGE }, false);
  await assert.rejects(readRamChunks(readerOf(bytes), sink, 'ram'), /keeps no XBZRLE state/);
});

test('ram: the sink refusing a block or offset propagates', async () => {
  const bytes = await writtenBytes((w) => {
    const c = new RamChunkWriter(w);
    c.page('nope', 0, new Uint8Array(PAGE));
    c.eos();
  });
  const { sink } = recordingSink({ 'pc.ram': PAGE });
  await assert.rejects(readRamChunks(readerOf(bytes), sink, 'ram'), /no page nope@0/);
});

test('ram: truncation at every offset is a StreamTruncatedError', async () => {
  const bytes = await writtenBytes((w) => {
    const c = new RamChunkWriter(w);
    c.memSize([{ idstr: 'pc.ram', size: 4 * PAGE }]);
    c.page('pc.ram', 0, new Uint8Array(PAGE).fill(1));
    c.zero('pc.ram', PAGE);
    c.xbzrle('pc.ram', 2 * PAGE, fromHex('0001ff'));
    c.eos();
  });
  for (let n = 0; n < bytes.length; n += n < 40 || n > bytes.length - 40 ? 1 : 61) {
    const { sink } = recordingSink({ 'pc.ram': 4 * PAGE });
    await assert.rejects(readRamChunks(readerOf(bytes.subarray(0, n), 5), sink, 'ram'), (e: unknown) => {
      assert.ok(e instanceof StreamTruncatedError, `cut at ${n}: ${String(e)}`);
      assert.equal((e as StreamTruncatedError).section, 'ram');
      return true;
    });
  }
});

test('ram: writer refuses unaligned offsets, short pages and bad block names', async () => {
  await assert.rejects(writtenBytes((w) => new RamChunkWriter(w).page('pc.ram', 100, new Uint8Array(PAGE))), StreamFormatError);
  await assert.rejects(writtenBytes((w) => new RamChunkWriter(w).page('pc.ram', 0, new Uint8Array(100))), StreamFormatError);
  await assert.rejects(writtenBytes((w) => new RamChunkWriter(w).zero('', 0)), StreamFormatError);
  await assert.rejects(writtenBytes((w) => new RamChunkWriter(w).memSize([{ idstr: 'a', size: 100 }])), StreamFormatError);
  assert.equal(RAM_SAVE_FLAG_PAGE | RAM_SAVE_FLAG_EOS, 0x18);
});

// ---- XBZRLE ----

test('xbzrle: golden encoding of one changed run (QEMU xbzrle.c format)', () => {
  const oldPage = new Uint8Array(PAGE);
  const newPage = oldPage.slice();
  newPage[10] = 0x11;
  newPage[11] = 0x22;
  const out = new Uint8Array(PAGE);
  const n = xbzrleEncode(oldPage, newPage, out);
  // zero run 10 (ULEB128 0x0a), data run 2 (0x02), the two new bytes; the trailing zero run is omitted
  assert.equal(toHex(out.subarray(0, n)), '0a021122');
});

test('xbzrle: two-byte ULEB128 lengths above 127', () => {
  const oldPage = new Uint8Array(PAGE);
  const newPage = oldPage.slice();
  newPage.fill(0xff, 300, 300 + 200);
  const out = new Uint8Array(PAGE);
  const n = xbzrleEncode(oldPage, newPage, out);
  // 300 = 0xac 0x02; 200 = 0xc8 0x01
  assert.equal(toHex(out.subarray(0, 4)), 'ac02c801');
  assert.equal(n, 4 + 200);
});

test('xbzrle: equal pages encode to 0; a page that changed everywhere overflows to -1', () => {
  const a = new Uint8Array(PAGE).fill(3);
  assert.equal(xbzrleEncode(a, a.slice(), new Uint8Array(PAGE)), 0);
  const b = new Uint8Array(PAGE).map((_, i) => (i & 1 ? 0 : 9));
  assert.equal(xbzrleEncode(new Uint8Array(PAGE).fill(1), b, new Uint8Array(PAGE)), -1);
});

test('xbzrle: round trip over random edits', () => {
  let seed = 1;
  const rand = (): number => {
    seed = (seed * 1103515245 + 12345) >>> 0;
    return seed >>> 8;
  };
  for (let round = 0; round < 200; round++) {
    const oldPage = new Uint8Array(PAGE).map(() => rand() & 0xff);
    const newPage = oldPage.slice();
    const edits = rand() % 40;
    for (let e = 0; e < edits; e++) {
      const at = rand() % PAGE;
      const len = 1 + (rand() % 64);
      for (let i = at; i < Math.min(PAGE, at + len); i++) newPage[i] = rand() & 0xff;
    }
    const out = new Uint8Array(PAGE);
    const n = xbzrleEncode(oldPage, newPage, out);
    if (n <= 0) continue;
    const page = oldPage.slice();
    xbzrleDecode(out.subarray(0, n), page);
    assert.deepEqual(page, newPage, `round ${round}`);
  }
});

test('xbzrle: unaligned views encode exactly as aligned ones (word-wise and byte-wise paths agree)', () => {
  const backing = new Uint8Array(3 * PAGE + 8);
  const oldPage = backing.subarray(1, 1 + PAGE);
  const newPage = backing.subarray(PAGE + 7, 2 * PAGE + 7);
  for (let i = 0; i < PAGE; i++) oldPage[i] = (i * 7) & 0xff;
  newPage.set(oldPage);
  for (const [at, len] of [[0, 1], [3, 9], [100, 300], [1021, 4], [4000, 96]] as const) {
    for (let i = at; i < at + len; i++) newPage[i] = oldPage[i]! ^ 0x5a;
  }
  const unaligned = new Uint8Array(PAGE);
  const aligned = new Uint8Array(PAGE);
  const n1 = xbzrleEncode(oldPage, newPage, unaligned);
  const n2 = xbzrleEncode(oldPage.slice(), newPage.slice(), aligned);
  assert.ok(n1 > 0);
  assert.equal(n1, n2);
  assert.deepEqual(unaligned.subarray(0, n1), aligned.subarray(0, n2));
  const page = oldPage.slice();
  xbzrleDecode(aligned.subarray(0, n2), page);
  assert.deepEqual(page, newPage.slice());
});

test('xbzrle: malformed deltas are StreamFormatErrors, never a crash', () => {
  const page = new Uint8Array(PAGE);
  for (const hex of ['05', '0000', '00 00', '0a 00', '8080 01', 'ff7f 01 00', '00 05 0102', '00 8120 ' + '00'.repeat(4097), '01 01 aa 00 01 bb']) {
    assert.throws(() => xbzrleDecode(fromHex(hex), page), (e: unknown) => e instanceof FerryError && e instanceof StreamFormatError, hex);
  }
});

test('a CONTINUE chunk at the start of a section means the block named in an earlier section (QEMU 7.2 sends this)', async () => {
  // Section 1 names pc.ram; section 2 starts with a CONTINUE page, as QEMU's sender does
  // when its last_sent_block is unchanged across iterations.
  const bytes = await writtenBytes((w) => {
    new RamChunkWriter(w).zero('pc.ram', 0);
    w.be64(RAM_SAVE_FLAG_EOS);
    w.be64(4096 | RAM_SAVE_FLAG_ZERO | RAM_SAVE_FLAG_CONTINUE);
    w.u8(0);
    w.be64(RAM_SAVE_FLAG_EOS);
  });
  const zeros: string[] = [];
  const sink: RamChunkSink = {
    memSize: () => {},
    pageTarget: () => { throw new Error('no pages here'); },
    zero: (idstr, offset) => void zeros.push(`${idstr}@${offset}`),
  };
  const state: RamStreamState = { lastBlock: null };
  const r = readerOf(bytes);
  await readRamChunks(r, sink, 'ram', state);
  await readRamChunks(r, sink, 'ram', state);
  assert.deepEqual(zeros, ['pc.ram@0', 'pc.ram@4096']);
  // Without the stream's state, the second section's CONTINUE names nothing: refused.
  const fresh = readerOf(bytes);
  await readRamChunks(fresh, sink, 'ram');
  await assert.rejects(readRamChunks(fresh, sink, 'ram'), /CONTINUE but no block was named/);
});

test('ram: zeroRun writes the same bytes as one zero() per page', async () => {
  const one = await writtenBytes((w) => {
    const c = new RamChunkWriter(w);
    for (let p = 3; p < 40; p++) c.zero('pc.ram', p * PAGE);
    c.zero('vga.vram', 0);
    for (let p = 40; p < 45; p++) c.zero('pc.ram', p * PAGE);
    c.eos();
  });
  const run = await writtenBytes((w) => {
    const c = new RamChunkWriter(w);
    c.zeroRun('pc.ram', 3 * PAGE, 37);
    c.zeroRun('vga.vram', 0, 1);
    c.zeroRun('pc.ram', 40 * PAGE, 0); // nothing
    c.zeroRun('pc.ram', 40 * PAGE, 5);
    c.eos();
  });
  assertHexEqual(toHex(run), toHex(one));
});

test('ram: runs of zero pages decode the same through any chunking, and a bad chunk inside a run is refused at its own offset', async () => {
  // Zero runs, a page in the middle, a zero page with fill 0x5a, and zero pages past a 4 GiB offset.
  const big = 5 * 2 ** 30;
  const bytes = await writtenBytes((w) => {
    const c = new RamChunkWriter(w);
    c.zeroRun('pc.ram', 0, 300);
    c.page('pc.ram', 300 * PAGE, new Uint8Array(PAGE).fill(1));
    c.zeroRun('pc.ram', 301 * PAGE, 200);
    c.eos();
  });
  // Where chunk k (from 0) of the first run starts: the first names its block (8 + 1 + 6
  // bytes of header, then the fill byte), the others are 9 bytes (CONTINUE).
  const chunkAt = (k: number): number => (k === 0 ? 0 : 16 + (k - 1) * 9);
  // Patch one zero chunk's fill byte: the 51st chunk after the page.
  const pageChunkEnd = chunkAt(300) + 8 + PAGE;
  bytes[pageChunkEnd + 50 * 9 + 8] = 0x5a;
  const highBytes = await writtenBytes((w) => {
    const c = new RamChunkWriter(w);
    c.zeroRun('high', big, 100);
    c.eos();
  });
  let expected: string[] | undefined;
  for (const chunkSize of [1, 7, 9, 100, 4104, 64 * 1024]) {
    const { sink, calls } = recordingSink({ 'pc.ram': 501 * PAGE });
    const r = readerOf(bytes, chunkSize);
    await readRamChunks(r, sink, 'ram');
    assert.equal(await r.atEnd(), true, `chunks of ${chunkSize}`);
    assert.equal(calls.length, 501);
    assert.equal(calls[300 + 1 + 50], `zero pc.ram ${(301 + 50) * PAGE} 90`);
    expected ??= calls;
    assert.deepEqual(calls, expected, `chunks of ${chunkSize}`);
    // Offsets above 4 GiB: a sink that only records (no 5 GiB array behind it).
    const highCalls: string[] = [];
    const highSink: RamChunkSink = {
      memSize: () => assert.fail('no MEM_SIZE here'),
      pageTarget: () => assert.fail('no page here'),
      zero: (idstr, offset, fill) => { highCalls.push(`zero ${idstr} ${offset} ${fill}`); },
    };
    await readRamChunks(readerOf(highBytes, chunkSize), highSink, 'ram');
    assert.deepEqual(highCalls, Array.from({ length: 100 }, (_, i) => `zero high ${big + i * PAGE} 0`));
  }
  // A block one page too small: the last zero chunk of the first run is refused, and so is
  // an unknown flag in the middle of a run, at that chunk's offset.
  const { sink } = recordingSink({ 'pc.ram': 299 * PAGE });
  await assert.rejects(readRamChunks(readerOf(bytes, 1000), sink, 'ram'), new RegExp(`no page pc.ram@${299 * PAGE}$`));
  const bad = bytes.slice();
  bad[chunkAt(10) + 7] = bad[chunkAt(10) + 7]! | 0x80; // the 11th chunk's flags gain RAM_SAVE_FLAG_HOOK
  const badSink = recordingSink({ 'pc.ram': 501 * PAGE });
  await assert.rejects(readRamChunks(readerOf(bad, 1000), badSink.sink, 'ram'), (err: unknown) => {
    assert.ok(err instanceof StreamFormatError, String(err));
    assert.equal(err.offset, chunkAt(10), err.message);
    return true;
  });
  assert.equal(badSink.calls.length, 10, 'the ten chunks before it were applied');
});

test('ram: runs of zero pages go to zeroRun whole where the sink takes them, one by one where it will not, with the same result and the same errors', async () => {
  // A run of 300 from the block's start (its first chunk names the block, so it goes to
  // zero()), a page, 50 zero pages, one with fill 0x5a, 149 more, and a run with a gap.
  const bytes = await writtenBytes((w) => {
    const c = new RamChunkWriter(w);
    c.zeroRun('pc.ram', 0, 300);
    c.page('pc.ram', 300 * PAGE, new Uint8Array(PAGE).fill(1));
    c.zeroRun('pc.ram', 301 * PAGE, 200);
    c.zeroRun('pc.ram', 600 * PAGE, 10);
    c.eos();
  });
  bytes[16 + 299 * 9 + 8 + PAGE + 50 * 9 + 8] = 0x5a;
  const withRuns = (blocks: Record<string, number>) => {
    const rec = recordingSink(blocks);
    const runs: string[] = [];
    rec.sink.zeroRun = (idstr, offset, count) => {
      const b = rec.ram.get(idstr);
      if (!b || offset + count * PAGE > b.byteLength) return false;
      runs.push(`${offset / PAGE}+${count}`);
      for (let i = 0; i < count; i++) rec.sink.zero(idstr, offset + i * PAGE, 0);
      return true;
    };
    return { ...rec, runs };
  };
  const plain = recordingSink({ 'pc.ram': 610 * PAGE });
  await readRamChunks(readerOf(bytes, 64 * 1024), plain.sink, 'ram');
  for (const chunkSize of [1, 9, 100, 4104, 64 * 1024]) {
    const sink = withRuns({ 'pc.ram': 610 * PAGE });
    const r = readerOf(bytes, chunkSize);
    await readRamChunks(r, sink.sink, 'ram');
    assert.equal(await r.atEnd(), true);
    // The same page calls in the same order, and the same RAM.
    assert.deepEqual(sink.calls, plain.calls, `chunks of ${chunkSize}`);
    assert.deepEqual(sink.ram.get('pc.ram'), plain.ram.get('pc.ram'));
    if (chunkSize === 64 * 1024) {
      // One buffer: whole runs after each chunk the general loop takes (a run's first), ended
      // by the fill-0x5a page and by the gap.
      assert.deepEqual(sink.runs, ['1+299', '302+49', '352+149', '600+10']);
    }
  }
  // A block that ends inside the second run: refused at the first chunk past its end, as one by one.
  const shortPlain = recordingSink({ 'pc.ram': 400 * PAGE });
  const plainError = await readRamChunks(readerOf(bytes, 64 * 1024), shortPlain.sink, 'ram').then(() => undefined, (err: unknown) => err);
  const shortRuns = withRuns({ 'pc.ram': 400 * PAGE });
  const runError = await readRamChunks(readerOf(bytes, 64 * 1024), shortRuns.sink, 'ram').then(() => undefined, (err: unknown) => err);
  assert.ok(plainError instanceof StreamFormatError && runError instanceof StreamFormatError);
  assert.equal(runError.message, plainError.message);
  assert.match(runError.message, new RegExp(`no page pc.ram@${400 * PAGE}$`));
  assert.deepEqual(shortRuns.calls, shortPlain.calls, 'the pages before it were applied, as one by one');
});

test('ram: runs of whole pages decode in place (pageFrom) exactly as through pageTarget, through any chunking', async () => {
  // Two runs of distinct pages with a zero page, a page of another block and a page past
  // 4 GiB's worth of offset bits in between: the run ends at each, and picks up again.
  const pattern = (i: number) => new Uint8Array(PAGE).map((_, j) => (i * 31 + j) & 0xff);
  const bytes = await writtenBytes((w) => {
    const c = new RamChunkWriter(w);
    for (let i = 0; i < 40; i++) c.page('pc.ram', i * PAGE, pattern(i));
    c.zero('pc.ram', 40 * PAGE);
    c.page('other', 0, pattern(99));
    for (let i = 41; i < 70; i++) c.page('pc.ram', i * PAGE, pattern(i));
    c.eos();
  });
  const expectRam = new Uint8Array(70 * PAGE);
  for (let i = 0; i < 70; i++) if (i !== 40) expectRam.set(pattern(i), i * PAGE);
  let expectedCalls: string[] | undefined;
  for (const chunkSize of [1, 9, 4100, 4104, 4105, 3 * 4104 + 5, 64 * 1024, bytes.byteLength]) {
    const plain = recordingSink({ 'pc.ram': 70 * PAGE, other: PAGE });
    await readRamChunks(readerOf(bytes, chunkSize), plain.sink, 'ram');
    const inPlace = recordingSink({ 'pc.ram': 70 * PAGE, other: PAGE });
    const fromCalls: string[] = [];
    inPlace.sink.pageFrom = (idstr, offset, buffer, byteOffset) => {
      fromCalls.push(`page ${idstr} ${offset}`);
      inPlace.ram.get(idstr)!.set(new Uint8Array(buffer, byteOffset, PAGE), offset);
    };
    const r = readerOf(bytes, chunkSize);
    await readRamChunks(r, inPlace.sink, 'ram');
    assert.equal(await r.atEnd(), true);
    assert.deepEqual(inPlace.ram.get('pc.ram'), expectRam, `chunks of ${chunkSize}`);
    assert.deepEqual(inPlace.ram.get('other'), pattern(99));
    assert.deepEqual(plain.ram.get('pc.ram'), expectRam);
    // Every page went one way or the other, in stream order.
    const merged = [...inPlace.calls.filter((c) => c.startsWith('page')), ...fromCalls].sort((a, b) => a.localeCompare(b));
    expectedCalls ??= plain.calls.filter((c) => c.startsWith('page')).sort((a, b) => a.localeCompare(b));
    assert.deepEqual(merged, expectedCalls);
    if (chunkSize >= 64 * 1024) assert.ok(fromCalls.length >= 60, `most pages in place with chunks of ${chunkSize}: ${fromCalls.length}`);
  }
  // A page chunk inside a run whose offset the sink refuses: refused at that chunk's offset.
  const small = recordingSink({ 'pc.ram': 30 * PAGE, other: PAGE });
  small.sink.pageFrom = (idstr, offset, buffer, byteOffset) => small.sink.pageTarget(idstr, offset).ram.set(new Uint8Array(buffer, byteOffset, PAGE), offset);
  await assert.rejects(readRamChunks(readerOf(bytes, 64 * 1024), small.sink, 'ram'), new RegExp(`no page pc.ram@${30 * PAGE}$`));
});
