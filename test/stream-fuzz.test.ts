// Mutation fuzzing of the whole incoming path (walker, framing, RAM codec, VMState):
// every mutated stream must either load or fail with a FerryError — never a RangeError or
// TypeError, never hang, never allocate absurd memory. Seeded: a failure prints its seed
// and case number; FERRY_FUZZ_SEED / FERRY_FUZZ_CASES reproduce or extend a run.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { FerryError, StreamFormatError } from '../src/errors.js';
import { createCollectingChannel, channelFromBytes } from '../src/stream/memory-channel.js';
import { StreamReader } from '../src/stream/reader.js';
import { StreamWriter } from '../src/stream/writer.js';
import {
  writeEof, writeHeader, writeSectionFooter, writeSectionPart, writeSectionStart, writeVmdesc,
} from '../src/stream/format.js';
import type { VmdescDevice } from '../src/stream/format.js';
import { RamChunkWriter, readRamChunks, xbzrleDecode, xbzrleEncode } from '../src/stream/ram-codec.js';
import type { RamChunkSink } from '../src/stream/ram-codec.js';
import { walkStream } from '../src/stream/stream-walker.js';
import { prng } from '../src/stream/testing.js';
import type { SectionLoader } from '../src/stream/stream-walker.js';
import { vmstateLoad, vmstateSave } from '../src/migration/vmstate.js';
import type { VmStateDescription, VmStateValue } from '../src/migration/vmstate-types.js';

const SEED = Number(process.env['FERRY_FUZZ_SEED'] ?? 0x5eed_f322);
const CASES = Number(process.env['FERRY_FUZZ_CASES'] ?? 4000);
const PAGE = 4096;
const RAM_PAGES = 8;
/** A mutated case that takes longer than this is a hang. */
const CASE_TIMEOUT_MS = 5000;
/** Memory the decoder may hold at once for a ~20 KB stream: generous, but far from absurd. */
const MAX_ARRAY_BUFFERS = 256 * 1024 * 1024;

const TIMER: VmStateDescription = {
  name: 'timer', version: 1, minimumVersion: 1,
  fields: [{ name: 'expire', type: 'int64' }, { name: 'armed', type: 'bool' }],
};
const SERIAL: VmStateDescription = {
  name: 'serial', version: 3, minimumVersion: 2,
  fields: [
    { name: 'divider', type: 'uint16' },
    { name: 'scr', type: 'uint8', count: 4 },
    { name: 'level', type: 'int32' },
    { name: 'fifo_len', type: 'uint32' },
    { name: 'fifo', type: 'buffer', lengthField: 'fifo_len', maxLength: 16 },
    { name: 'n', type: 'uint16' },
    { name: 'timers', type: 'struct', struct: TIMER, countField: 'n', maxLength: 8 },
    { name: 'extra', type: 'uint8', sinceVersion: 3 },
  ],
  subsections: [
    {
      description: { name: 'serial/fifo_timeout', version: 1, minimumVersion: 1, fields: [{ name: 'timeout', type: 'uint64' }] },
      key: 'fifoTimeout',
      needed: (s: VmStateValue) => s['fifoTimeout'] !== undefined,
    },
  ],
};
const SERIAL_STATE: VmStateValue = {
  divider: 12, scr: [1, 2, 3, 4], level: -5, fifo_len: 3, fifo: new Uint8Array([7, 8, 9]),
  n: 2, timers: [{ expire: 5n, armed: true }, { expire: -9n, armed: false }], extra: 0x05,
  fifoTimeout: { timeout: 77n },
};
const LANE: VmStateDescription = {
  name: 'lane', version: 1, minimumVersion: 1,
  fields: [{ name: 'mask', type: 'uint32' }],
  subsections: [{ description: { name: 'lane/err', version: 1, minimumVersion: 1, fields: [{ name: 'code', type: 'uint16' }] }, key: 'err', needed: (s: VmStateValue) => s['err'] !== undefined }],
};
const CTL: VmStateDescription = {
  name: 'ctl', version: 1, minimumVersion: 1,
  fields: [{ name: 'lanes', type: 'struct', struct: LANE, count: 2 }, { name: 'blob', type: 'buffer', size: 8 }],
};
const CTL_STATE: VmStateValue = {
  lanes: [{ mask: 1 }, { mask: 2, err: { code: 3 } }],
  blob: new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8]),
};
const DEVICES: Record<string, VmStateDescription> = { serial: SERIAL, ctl: CTL };

interface Built {
  bytes: Uint8Array;
  /** Byte ranges of page payloads: mutations mostly go elsewhere, where the structure is. */
  payloads: Array<[number, number]>;
  /** Offsets and sizes of length/count fields, for targeted corruption. */
  lengths: Array<[number, 1 | 2 | 4]>;
}

async function buildStream(): Promise<Built> {
  const channel = createCollectingChannel();
  const w = new StreamWriter(channel, { bufferSize: 1024 });
  const payloads: Array<[number, number]> = [];
  const lengths: Array<[number, 1 | 2 | 4]> = [];
  const ram = new Uint8Array(RAM_PAGES * PAGE);
  for (let i = 0; i < ram.length; i += 3) ram[i] = i & 0xff;
  ram.fill(0, 2 * PAGE, 4 * PAGE);

  writeHeader(w, 'pc-i440fx-7.2');
  lengths.push([9, 4]);
  lengths.push([w.bytesWritten + 5, 1]); // idstr length of the first section
  writeSectionStart(w, 'start', 0, 'ram', 0, 4);
  let c = new RamChunkWriter(w);
  lengths.push([w.bytesWritten + 8, 1]); // block idstr length in MEM_SIZE
  c.memSize([{ idstr: 'pc.ram', size: ram.length }]);
  c.eos();
  writeSectionFooter(w, 0);
  writeSectionPart(w, 'part', 0);
  c = new RamChunkWriter(w);
  for (let p = 0; p < 5; p++) {
    const data = ram.subarray(p * PAGE, (p + 1) * PAGE);
    if (data.every((b) => b === 0)) {
      c.zero('pc.ram', p * PAGE);
    } else {
      c.page('pc.ram', p * PAGE, data);
      payloads.push([w.bytesWritten - PAGE, w.bytesWritten]);
    }
  }
  c.eos();
  writeSectionFooter(w, 0);
  writeSectionPart(w, 'end', 0);
  c = new RamChunkWriter(w);
  const changed = ram.slice(0, PAGE);
  changed.fill(0xee, 100, 140);
  const enc = new Uint8Array(PAGE);
  const n = xbzrleEncode(ram.subarray(0, PAGE), changed, enc);
  lengths.push([w.bytesWritten + 8 + 1 + 6 + 1, 2]); // XBZRLE be16 length
  c.xbzrle('pc.ram', 0, enc.subarray(0, n));
  c.zero('pc.ram', 5 * PAGE);
  c.page('pc.ram', 6 * PAGE, ram.subarray(6 * PAGE, 7 * PAGE));
  payloads.push([w.bytesWritten - PAGE, w.bytesWritten]);
  c.eos();
  writeSectionFooter(w, 0);
  const devices: VmdescDevice[] = [];
  writeSectionStart(w, 'full', 1, 'serial', 0, 3);
  const serialAt = w.bytesWritten;
  devices.push(vmstateSave(w, SERIAL, SERIAL_STATE, { idstr: 'serial', instanceId: 0 }));
  lengths.push([serialAt + 2 + 4 + 4, 4]); // fifo_len
  lengths.push([serialAt + 2 + 4 + 4 + 4 + 3, 2]); // n (timers count)
  writeSectionFooter(w, 1);
  writeSectionStart(w, 'full', 2, 'ctl', 0, 1);
  devices.push(vmstateSave(w, CTL, CTL_STATE, { idstr: 'ctl', instanceId: 0 }));
  writeSectionFooter(w, 2);
  writeEof(w);
  lengths.push([w.bytesWritten + 1, 4]); // vmdesc JSON length
  writeVmdesc(w, { page_size: PAGE, devices });
  await w.close();
  return { bytes: channel.bytes(), payloads, lengths };
}

/** Load a whole stream the way a destination does; returns what it loaded. */
async function load(bytes: Uint8Array, chunkSize: number): Promise<{ ram: Uint8Array; devices: Map<string, VmStateValue> }> {
  const ram = new Uint8Array(RAM_PAGES * PAGE);
  const devices = new Map<string, VmStateValue>();
  const page = (idstr: string, offset: number): void => {
    if (idstr !== 'pc.ram' || offset % PAGE !== 0 || offset + PAGE > ram.length) {
      throw new StreamFormatError(`no RAM page "${idstr}"@${offset}`, 0, 'ram');
    }
  };
  const sink: RamChunkSink = {
    memSize: (total, blocks) => {
      if (total !== ram.length || blocks.length !== 1 || blocks[0]!.idstr !== 'pc.ram' || blocks[0]!.size !== ram.length) {
        throw new StreamFormatError(`RAM layout ${total} ${JSON.stringify(blocks)} does not match`, 0, 'ram');
      }
    },
    pageTarget: (idstr, offset) => {
      page(idstr, offset);
      return { ram, offset };
    },
    zero: (idstr, offset, fill) => {
      page(idstr, offset);
      ram.fill(fill, offset, offset + PAGE);
    },
    xbzrle: (idstr, offset, encoded) => {
      page(idstr, offset);
      xbzrleDecode(encoded, ram.subarray(offset, offset + PAGE));
    },
  };
  const r = new StreamReader(channelFromBytes(bytes, { chunkSize }));
  await walkStream(r, {
    openSection(section): SectionLoader {
      if (section.idstr === 'ram' && section.instanceId === 0) {
        return {
          load: async (reader, _kind, s, name) => {
            if (s.versionId !== 4) throw new StreamFormatError(`RAM version ${s.versionId} is not 4`, reader.offset, name);
            await readRamChunks(reader, sink, name);
          },
        };
      }
      const desc = DEVICES[section.idstr];
      if (!desc || section.instanceId !== 0) {
        throw new StreamFormatError(`Unknown savevm section "${section.idstr}" instance ${section.instanceId}`, r.offset, section.idstr);
      }
      return {
        load: async (reader, kind, s, name) => {
          if (kind !== 'full') throw new StreamFormatError(`Device section "${name}" must be FULL, not ${kind}`, reader.offset, name);
          devices.set(name, await vmstateLoad(reader, desc, s.versionId, name));
        },
      };
    },
  });
  return { ram, devices };
}

type Mutation = (bytes: Uint8Array, rand: () => number, built: Built) => { bytes: Uint8Array; what: string };

const INTERESTING = [0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x10, 0x20, 0x40, 0x7e, 0x7f, 0x80, 0xfe, 0xff];

function pickOffset(rand: () => number, built: Built, length: number): number {
  // Mostly where the structure is, not inside page data.
  for (let tries = 0; tries < 8; tries++) {
    const at = Math.floor(rand() * length);
    if (rand() < 0.2 || !built.payloads.some(([a, b]) => at >= a && at < b)) return at;
  }
  return Math.floor(rand() * length);
}

const MUTATIONS: Array<[string, Mutation]> = [
  ['bit flips', (b, rand, built) => {
    const out = b.slice();
    const flips = 1 + Math.floor(rand() * 3);
    const at: number[] = [];
    for (let i = 0; i < flips; i++) {
      const o = pickOffset(rand, built, out.length);
      out[o]! ^= 1 << Math.floor(rand() * 8);
      at.push(o);
    }
    return { bytes: out, what: `flip bits at ${at.join(',')}` };
  }],
  ['byte change', (b, rand, built) => {
    const out = b.slice();
    const o = pickOffset(rand, built, out.length);
    const v = rand() < 0.6 ? INTERESTING[Math.floor(rand() * INTERESTING.length)]! : Math.floor(rand() * 256);
    out[o] = v;
    return { bytes: out, what: `byte ${o} = 0x${v.toString(16)}` };
  }],
  ['truncation', (b, rand) => {
    const n = Math.floor(rand() * b.length);
    return { bytes: b.subarray(0, n), what: `truncate to ${n}` };
  }],
  ['insertion', (b, rand, built) => {
    const o = pickOffset(rand, built, b.length);
    const len = 1 + Math.floor(rand() * 16);
    const ins = Uint8Array.from({ length: len }, () => (rand() < 0.5 ? INTERESTING[Math.floor(rand() * INTERESTING.length)]! : Math.floor(rand() * 256)));
    const out = new Uint8Array(b.length + len);
    out.set(b.subarray(0, o));
    out.set(ins, o);
    out.set(b.subarray(o), o + len);
    return { bytes: out, what: `insert ${len} bytes at ${o}` };
  }],
  ['deletion', (b, rand, built) => {
    const o = pickOffset(rand, built, b.length);
    const len = 1 + Math.floor(rand() * 16);
    const out = new Uint8Array([...b.subarray(0, o), ...b.subarray(Math.min(b.length, o + len))]);
    return { bytes: out, what: `delete ${len} bytes at ${o}` };
  }],
  ['length field', (b, rand, built) => {
    const out = b.slice();
    const [o, size] = built.lengths[Math.floor(rand() * built.lengths.length)]!;
    const dv = new DataView(out.buffer);
    const max = size === 1 ? 0xff : size === 2 ? 0xffff : 0xffffffff;
    const old = size === 1 ? dv.getUint8(o) : size === 2 ? dv.getUint16(o) : dv.getUint32(o);
    const choices = [0, 1, max, max - 1, old + 1, old - 1, 0x7fffffff & max, Math.floor(rand() * (max + 1))];
    const v = Math.min(max, Math.max(0, choices[Math.floor(rand() * choices.length)]!));
    if (size === 1) dv.setUint8(o, v);
    else if (size === 2) dv.setUint16(o, v);
    else dv.setUint32(o, v);
    return { bytes: out, what: `length field at ${o} (${size} bytes) ${old} -> ${v}` };
  }],
  ['block copy', (b, rand, built) => {
    const from = pickOffset(rand, built, b.length);
    const to = pickOffset(rand, built, b.length);
    const len = 1 + Math.floor(rand() * 32);
    const out = b.slice();
    out.copyWithin(to, from, from + len);
    return { bytes: out, what: `copy ${len} bytes from ${from} to ${to}` };
  }],
];

async function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`HANG: ${what} did not settle in ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([p, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

test('stream fuzz: the unmutated stream loads completely and correctly', async () => {
  const built = await buildStream();
  for (const chunk of [1, 13, 4096, built.bytes.length]) {
    const { devices, ram } = await load(built.bytes, chunk);
    assert.deepEqual(devices.get('serial'), SERIAL_STATE);
    assert.deepEqual(devices.get('ctl'), CTL_STATE);
    assert.equal(ram[100], 0xee, 'the XBZRLE delta was applied');
    assert.equal(ram[6 * PAGE + 3], (6 * PAGE + 3) & 0xff);
  }
});

test(`stream fuzz: ${CASES} seeded mutations (seed 0x${SEED.toString(16)}) load or throw a FerryError`, { timeout: 10 * 60_000 }, async (t) => {
  const built = await buildStream();
  const rand = prng(SEED);
  const outcomes = new Map<string, number>();
  const perMutation = new Map<string, number>();
  for (let i = 0; i < CASES; i++) {
    const [name, mutate] = MUTATIONS[Math.floor(rand() * MUTATIONS.length)]!;
    const { bytes, what } = mutate(built.bytes, rand, built);
    const chunkSize = [7, 64, 1000, 4096, 65536][Math.floor(rand() * 5)]!;
    const label = `case ${i} (seed 0x${SEED.toString(16)}, ${name}: ${what}, chunks of ${chunkSize})`;
    perMutation.set(name, (perMutation.get(name) ?? 0) + 1);
    try {
      await withTimeout(load(bytes, chunkSize), CASE_TIMEOUT_MS, label);
      outcomes.set('loaded', (outcomes.get('loaded') ?? 0) + 1);
    } catch (err) {
      if (!(err instanceof FerryError)) {
        assert.fail(`${label}: threw ${err instanceof Error ? `${err.name}: ${err.message}\n${err.stack}` : String(err)}`);
      }
      assert.equal(typeof err.message, 'string');
      assert.ok(err.message.length > 0, `${label}: empty message`);
      outcomes.set(err.code, (outcomes.get(err.code) ?? 0) + 1);
    }
    if (i % 250 === 0) {
      const { arrayBuffers } = process.memoryUsage();
      assert.ok(arrayBuffers < MAX_ARRAY_BUFFERS, `${label}: ${arrayBuffers} bytes of ArrayBuffers held`);
    }
  }
  t.diagnostic(`outcomes: ${JSON.stringify(Object.fromEntries(outcomes))}; mutations: ${JSON.stringify(Object.fromEntries(perMutation))}`);
  // The fuzzer must reach past the first bytes: both typed failures and successful loads occur.
  assert.ok((outcomes.get('FERRY_ERR_STREAM_FORMAT') ?? 0) > CASES / 20, `too few format errors: ${JSON.stringify([...outcomes])}`);
  assert.ok((outcomes.get('FERRY_ERR_STREAM_TRUNCATED') ?? 0) > CASES / 50, `too few truncations: ${JSON.stringify([...outcomes])}`);
  assert.ok((outcomes.get('loaded') ?? 0) > 0, `no mutated stream loaded: ${JSON.stringify([...outcomes])}`);
  for (const [name] of MUTATIONS) assert.ok((perMutation.get(name) ?? 0) > CASES / 20, `mutation "${name}" ran too rarely`);
});
