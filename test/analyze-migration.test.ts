// Interoperability with QEMU 7.2's own tools, both ways: scripts/analyze-migration.py (from
// Debian's source package, fetched by scripts/fetch-qemu-scripts.sh) must decode a complete
// Ferry stream, and Ferry's reader must walk a stream that QEMU itself wrote.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createCollectingChannel } from '../src/stream/memory-channel.js';
import { StreamWriter } from '../src/stream/writer.js';
import {
  writeEof, writeHeader, writeSectionFooter, writeSectionPart, writeSectionStart, writeVmdesc,
} from '../src/stream/format.js';
import type { Vmdesc, VmdescDevice } from '../src/stream/format.js';
import { RamChunkWriter, readRamChunks } from '../src/stream/ram-codec.js';
import type { RamChunkSink } from '../src/stream/ram-codec.js';
import { walkStream } from '../src/stream/stream-walker.js';
import { decodeByVmdesc, findVmdesc } from '../src/stream/vmdesc-decoder.js';
import type { DecodedRecord } from '../src/stream/vmdesc-decoder.js';
import { readerOf } from '../src/stream/testing.js';
import { FerryError, StreamFormatError } from '../src/errors.js';
import { vmstateSave } from '../src/migration/vmstate.js';
import type { VmStateDescription, VmStateValue } from '../src/migration/vmstate-types.js';

// dist/test/analyze-migration.test.js → the repository root
const ROOT = resolve(fileURLToPath(import.meta.url), '..', '..', '..');
const SCRIPT = join(ROOT, '.cache', 'qemu-scripts', 'analyze-migration.py');
const SKIP = existsSync(SCRIPT) ? false : `QEMU's analyze-migration.py not fetched: run scripts/fetch-qemu-scripts.sh (as root) first`;

const PAGE = 4096;
const RAM_SIZE = 16 * PAGE;

const TIMER: VmStateDescription = {
  name: 'timer', version: 1, minimumVersion: 1,
  fields: [{ name: 'expire', type: 'int64' }, { name: 'armed', type: 'bool' }],
};

const SERIAL: VmStateDescription = {
  name: 'serial', version: 3, minimumVersion: 2,
  fields: [
    { name: 'divider', type: 'uint16' },
    { name: 'rbr', type: 'uint8' },
    { name: 'ier', type: 'uint8' },
    { name: 'scr', type: 'uint8', count: 4 },
    { name: 'level', type: 'int32' },
    { name: 'thr_ipending', type: 'bool' },
    { name: 'fifo_len', type: 'uint32' },
    { name: 'fifo', type: 'buffer', lengthField: 'fifo_len', maxLength: 16 },
    { name: 'timers', type: 'struct', struct: TIMER, count: 2 },
  ],
  subsections: [
    {
      description: { name: 'serial/fifo_timeout', version: 1, minimumVersion: 1, fields: [{ name: 'timeout', type: 'uint64' }, { name: 'poll', type: 'struct', struct: TIMER }] },
      key: 'fifoTimeout',
      needed: (s: VmStateValue) => s['fifoTimeout'] !== undefined,
    },
    {
      description: { name: 'serial/unused', version: 1, minimumVersion: 1, fields: [{ name: 'x', type: 'uint8' }] },
      key: 'unused',
      needed: () => false,
    },
  ],
};

const SERIAL_STATE: VmStateValue = {
  divider: 0x000c, rbr: 0x41, ier: 0x05, scr: [1, 2, 3, 4], level: -5, thr_ipending: true,
  fifo_len: 4, fifo: new Uint8Array([0xde, 0xad, 0xbe, 0xef]),
  timers: [{ expire: 100n, armed: true }, { expire: -1n, armed: false }],
  fifoTimeout: { timeout: 0x0102030405060708n, poll: { expire: 7n, armed: true } },
};

const INNER_SUB: VmStateDescription = { name: 'lane/err', version: 1, minimumVersion: 1, fields: [{ name: 'code', type: 'uint16' }] };
const LANE: VmStateDescription = {
  name: 'lane', version: 2, minimumVersion: 1,
  fields: [{ name: 'mask', type: 'uint32' }, { name: 'tag', type: 'buffer', size: 2 }],
  subsections: [{ description: INNER_SUB, key: 'err', needed: (s: VmStateValue) => s['err'] !== undefined }],
};
const CONTROLLER: VmStateDescription = {
  name: 'ferry-ctl', version: 1, minimumVersion: 1,
  fields: [
    { name: 'id', type: 'int8' },
    { name: 'count', type: 'uint8' },
    { name: 'regs', type: 'int16', countField: 'count', maxLength: 8 },
    { name: 'lanes', type: 'struct', struct: LANE, count: 3 },
    { name: 'big', type: 'uint64' },
  ],
};
const CONTROLLER_STATE: VmStateValue = {
  id: -3, count: 3, regs: [-1, 0, 0x7fff], big: 0xffffffffffffffffn,
  lanes: [
    { mask: 0xff, tag: new Uint8Array([0x61, 0x62]) },
    { mask: 0x100, tag: new Uint8Array([0x63, 0x64]), err: { code: 0x1234 } },
    { mask: 0, tag: new Uint8Array([0, 1]) },
  ],
};

function ramContents(): Uint8Array {
  const ram = new Uint8Array(RAM_SIZE);
  for (let p = 0; p < 16; p++) {
    if (p % 3 === 0) continue; // zero pages
    for (let i = 0; i < PAGE; i += 64) ram[p * PAGE + i] = (p * 17 + i) & 0xff;
  }
  return ram;
}

async function buildStream(): Promise<{ bytes: Uint8Array; vmdesc: Vmdesc; ram: Uint8Array }> {
  const channel = createCollectingChannel();
  const w = new StreamWriter(channel, { bufferSize: 4096 });
  const ram = ramContents();
  const devices: VmdescDevice[] = [];
  writeHeader(w, 'pc-i440fx-7.2');
  // RAM: START (block list), PART (first half, pages and zero pages), END (the rest)
  writeSectionStart(w, 'start', 0, 'ram', 0, 4);
  let chunks = new RamChunkWriter(w);
  chunks.memSize([{ idstr: 'pc.ram', size: RAM_SIZE }]);
  chunks.eos();
  writeSectionFooter(w, 0);
  const sendPages = (from: number, to: number): void => {
    chunks = new RamChunkWriter(w);
    for (let p = from; p < to; p++) {
      const data = ram.subarray(p * PAGE, (p + 1) * PAGE);
      if (data.every((b) => b === 0)) chunks.zero('pc.ram', p * PAGE);
      else chunks.page('pc.ram', p * PAGE, data);
    }
    chunks.eos();
  };
  writeSectionPart(w, 'part', 0);
  sendPages(0, 10);
  writeSectionFooter(w, 0);
  writeSectionPart(w, 'end', 0);
  sendPages(10, 16);
  writeSectionFooter(w, 0);
  // Devices: FULL sections with their footers, described in the vmdesc in stream order
  writeSectionStart(w, 'full', 1, 'serial', 0, SERIAL.version);
  devices.push(vmstateSave(w, SERIAL, SERIAL_STATE, { idstr: 'serial', instanceId: 0 }));
  writeSectionFooter(w, 1);
  writeSectionStart(w, 'full', 2, 'ferry-ctl', 1, CONTROLLER.version);
  devices.push(vmstateSave(w, CONTROLLER, CONTROLLER_STATE, { idstr: 'ferry-ctl', instanceId: 1 }));
  writeSectionFooter(w, 2);
  writeEof(w);
  const vmdesc: Vmdesc = { page_size: PAGE, devices };
  writeVmdesc(w, vmdesc);
  await w.close();
  return { bytes: channel.bytes(), vmdesc, ram };
}

function analyze(args: string[], cwd: string): string {
  const result = spawnSync('python3', [SCRIPT, ...args], { cwd, encoding: 'utf8', timeout: 60_000 });
  assert.equal(result.status, 0, `analyze-migration.py ${args.join(' ')} failed:\n${result.stderr}`);
  return result.stdout;
}

test('analyze-migration.py decodes RAM and every device of a Ferry stream', { skip: SKIP }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-analyze-'));
  try {
    const { bytes } = await buildStream();
    const file = join(dir, 'stream.bin');
    writeFileSync(file, bytes);
    const state = JSON.parse(analyze(['-f', file], dir)) as Record<string, Record<string, unknown>>;
    assert.deepEqual(Object.keys(state), ['ram (0)', 'serial (1)', 'ferry-ctl (2)']);
    assert.deepEqual(state['ram (0)'], { 'section sizes': { 'pc.ram': '0x0000000000010000' } });
    assert.deepEqual(state['serial (1)'], {
      divider: '0x000c',
      rbr: '0x41',
      ier: '0x05',
      scr: ['0x01', '0x02', '0x03', '0x04'],
      level: '0xfffffffb (-5)',
      thr_ipending: true,
      fifo_len: '0x00000004',
      fifo: 'de ad be ef',
      timers: [
        { expire: '0x0000000000000064', armed: true },
        { expire: '0xffffffffffffffff (-1)', armed: false },
      ],
      'serial/fifo_timeout': { timeout: '0x0102030405060708', poll: { expire: '0x0000000000000007', armed: true } },
    });
    assert.deepEqual(state['ferry-ctl (2)'], {
      id: '0xfd (-3)',
      count: '0x03',
      regs: ['0xffff (-1)', '0x0000', '0x7fff'],
      lanes: [
        { mask: '0x000000ff', tag: '61 62' },
        { mask: '0x00000100', tag: '63 64', 'lane/err': { code: '0x1234' } },
        { mask: '0x00000000', tag: '00 01' },
      ],
      big: '0xffffffffffffffff',
    });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('analyze-migration.py -x extracts guest RAM byte for byte, and desc.json equals our vmdesc', { skip: SKIP }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-analyze-'));
  try {
    const { bytes, vmdesc, ram } = await buildStream();
    const file = join(dir, 'stream.bin');
    writeFileSync(file, bytes);
    const out = analyze(['-x', '-f', file], dir);
    assert.match(out, /desc\.json/);
    assert.match(out, /pc\.ram/);
    const extracted = readFileSync(join(dir, 'pc.ram'));
    assert.equal(extracted.byteLength, RAM_SIZE);
    assert.ok(Buffer.from(ram).equals(extracted), 'extracted pc.ram differs from the guest RAM sent');
    assert.deepEqual(JSON.parse(readFileSync(join(dir, 'desc.json'), 'utf8')), JSON.parse(JSON.stringify(vmdesc)));
    const extractedState = JSON.parse(readFileSync(join(dir, 'state.json'), 'utf8')) as Record<string, unknown>;
    assert.deepEqual(Object.keys(extractedState), ['ram (0)', 'serial (1)', 'ferry-ctl (2)']);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('analyze-migration.py --dump desc prints the vmdesc the stream carries', { skip: SKIP }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-analyze-'));
  try {
    const { bytes, vmdesc } = await buildStream();
    const file = join(dir, 'stream.bin');
    writeFileSync(file, bytes);
    const desc = JSON.parse(analyze(['--dump', 'desc', '-f', file], dir)) as Vmdesc;
    assert.deepEqual(desc, JSON.parse(JSON.stringify(vmdesc)));
    // the compressed array form QEMU uses for identical elements, and per-element entries otherwise
    const ctl = desc.devices[1]!;
    assert.equal(ctl.fields.find((f) => f.name === 'regs')?.array_len, 3);
    assert.deepEqual(ctl.fields.filter((f) => f.name === 'lanes').map((f) => f.index), [0, 1, 2]);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

// ---- a stream written by QEMU 7.2 itself ----

const QEMU = '/usr/bin/qemu-system-x86_64';
const BIOS = '/usr/share/seabios/bios-256k.bin';
const QEMU_SKIP = existsSync(QEMU) ? false : `${QEMU} not installed (apt-get install qemu-system-x86)`;

test('a QEMU 7.2 migration stream walks with Ferry\'s reader: header, RAM blocks, every device by its vmdesc', { skip: QEMU_SKIP, timeout: 120_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-qemu-stream-'));
  try {
    const file = join(dir, 'qemu.bin');
    // A paused 32 MiB pc guest (TCG: no KVM needed), migrated to a file through HMP.
    const run = spawnSync(QEMU, ['-machine', 'pc', '-m', '32', '-nodefaults', '-display', 'none', '-S', '-accel', 'tcg', '-monitor', 'stdio'], {
      input: `migrate "exec:cat > ${file}"\nquit\n`, encoding: 'utf8', timeout: 60_000,
    });
    assert.equal(run.status, 0, `QEMU failed: ${run.stderr}`);
    const bytes = new Uint8Array(readFileSync(file));
    const vmdesc = findVmdesc(bytes);
    assert.ok(vmdesc, 'QEMU stream has a vmdesc');
    assert.equal(vmdesc.page_size, 4096);

    const blocks = new Map<string, Uint8Array>();
    // QEMU starts a section with a CONTINUE chunk when the block did not change: one state for the stream.
    const ramState = { lastBlock: null as string | null };
    const sink: RamChunkSink = {
      memSize: (total, list) => {
        assert.equal(list.reduce((n, b) => n + b.size, 0), total);
        for (const b of list) blocks.set(b.idstr, new Uint8Array(b.size));
      },
      pageTarget: (idstr, offset) => {
        const ram = blocks.get(idstr);
        if (!ram || offset + 4096 > ram.length) throw new StreamFormatError(`no block ${idstr}@${offset}`, 0, 'ram');
        return { ram, offset };
      },
      zero: (idstr, offset, fill) => void blocks.get(idstr)?.fill(fill, offset, offset + 4096),
    };
    const decoded = new Map<string, DecodedRecord>();
    const result = await walkStream(readerOf(bytes, 65536), {
      openSection: (s) => {
        if (s.idstr === 'ram') return { load: (r, _k, _s, name) => readRamChunks(r, sink, name, ramState) };
        const device = vmdesc.devices.find((d) => d.name === s.idstr && d.instance_id === s.instanceId);
        if (!device) throw new StreamFormatError(`section "${s.idstr}" is not in the vmdesc`, 0, s.idstr);
        return { load: async (r, _k, _s, name) => void decoded.set(`${name}/${s.instanceId}`, await decodeByVmdesc(r, device, name)) };
      },
    });
    assert.equal(result.header.machineType, 'pc-i440fx-7.2');
    assert.deepEqual(result.vmdesc, vmdesc);
    assert.equal(result.length, bytes.length);
    assert.equal(blocks.get('pc.ram')?.length, 32 * 1024 * 1024);
    assert.equal(decoded.size, vmdesc.devices.length, 'every device section decoded');
    const cpu = decoded.get('cpu/0');
    assert.ok(cpu && Array.isArray(cpu['env.regs']) && cpu['env.regs'].length === 16, 'cpu state has 16 general registers');
    if (existsSync(BIOS)) {
      assert.deepEqual(blocks.get('pc.bios'), new Uint8Array(readFileSync(BIOS)), 'pc.bios arrived byte for byte');
    }
  } catch (err) {
    if (err instanceof FerryError) err.message += ` (offset ${'offset' in err ? String(err.offset) : '?'})`;
    throw err;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
