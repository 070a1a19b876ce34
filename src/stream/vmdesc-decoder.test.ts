import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FerryError, StreamFormatError } from '../errors.js';
import { writeEof, writeHeader, writeSectionFooter, writeSectionStart, writeVmdesc } from './format.js';
import type { Vmdesc, VmdescStruct } from './format.js';
import { readRamChunks } from './ram-codec.js';
import type { RamChunkSink } from './ram-codec.js';
import { walkStream } from './stream-walker.js';
import { decodeByVmdesc, findVmdesc } from './vmdesc-decoder.js';
import type { DecodedRecord } from './vmdesc-decoder.js';
import { asciiHex, fromHex, readerOf, writtenBytes } from './testing.js';

const DESC: VmdescStruct = {
  vmsd_name: 'dev', version: 1,
  fields: [
    { name: 'a', type: 'uint16', size: 2 },
    { name: 's', type: 'int8', size: 1 },
    { name: 'big', type: 'int64', size: 8 },
    { name: 'le', type: 'int32 le', size: 4 },
    { name: 'on', type: 'bool', size: 1 },
    { name: 'arr', array_len: 3, type: 'uint8', size: 1 },
    { name: 'el', index: 0, type: 'struct', struct: { vmsd_name: 'e', version: 1, fields: [{ name: 'x', type: 'uint8', size: 1 }] }, size: 1 },
    { name: 'el', index: 1, type: 'struct', struct: { vmsd_name: 'e', version: 1, fields: [{ name: 'x', type: 'uint8', size: 1 }] }, size: 1 },
    { name: 'raw', type: 'timer', size: 3 },
  ],
  subsections: [{ vmsd_name: 'dev/sub', version: 2, fields: [{ name: 'y', type: 'uint32', size: 4 }] }],
};

test('vmdesc decoder: reads every kind of field the way analyze-migration.py does', async () => {
  const bytes = fromHex(
    `0102 ff fffffffffffffffe 05000000 01 0a0b0c 07 08 aabbcc 05 07 ${asciiHex('dev/sub')} 00000002 00000009`,
  );
  const r = readerOf(bytes, 3);
  const got = await decodeByVmdesc(r, DESC, 'dev');
  assert.deepEqual(got, {
    a: 0x0102, s: -1, big: -2n, le: 5, on: true, arr: [10, 11, 12],
    el: [{ x: 7 }, { x: 8 }], raw: new Uint8Array([0xaa, 0xbb, 0xcc]), 'dev/sub': { y: 9 },
  });
  assert.equal(await r.atEnd(), true);
});

test('vmdesc decoder: a missing subsection, bad index order or huge size is a StreamFormatError', async () => {
  await assert.rejects(decodeByVmdesc(readerOf(fromHex('01 7e00000000')), { vmsd_name: 'd', version: 1, fields: [{ name: 'a', type: 'uint8', size: 1 }], subsections: [{ vmsd_name: 'd/s', version: 1, fields: [] }] }, 'd'), /Subsection "d\/s" of "d" not found/);
  await assert.rejects(decodeByVmdesc(readerOf(fromHex('01')), { vmsd_name: 'd', version: 1, fields: [{ name: 'a', index: 1, type: 'uint8', size: 1 }] }, 'd'), StreamFormatError);
  await assert.rejects(decodeByVmdesc(readerOf(fromHex('01')), { vmsd_name: 'd', version: 1, fields: [{ name: 'a', type: 'buffer', size: 2 ** 40 }] }, 'd'), StreamFormatError);
});

test('findVmdesc: finds the vmdesc at the end of a stream, even when its length contains "{"', async () => {
  const vmdesc: Vmdesc = { page_size: 4096, devices: [{ name: 'x', instance_id: 0, vmsd_name: 'x', version: 1, fields: [{ name: 'pad', type: 'buffer', size: 1, }] }] };
  // Pad the JSON so that its length is 0x7bXX: the length bytes then contain 0x7b ("{").
  const base = JSON.stringify(vmdesc).length;
  vmdesc.devices[0]!.fields[0]!.name = 'p'.repeat(0x7b10 - base + 3);
  const bytes = await writtenBytes((w) => {
    writeHeader(w, 'pc');
    writeEof(w);
    writeVmdesc(w, vmdesc);
  });
  assert.equal(JSON.stringify(vmdesc).length, 0x7b10);
  assert.deepEqual(findVmdesc(bytes), vmdesc);
  assert.equal(findVmdesc(bytes.subarray(0, bytes.length - 1)), null);
  assert.equal(findVmdesc(new Uint8Array(10)), null);
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
        if (s.idstr === 'ram') return { load: (r, _k, _s, name) => readRamChunks(r, sink, name) };
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
