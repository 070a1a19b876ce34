import { test } from 'node:test';
import assert from 'node:assert/strict';
import { StreamFormatError } from '../errors.js';
import { writeEof, writeHeader, writeVmdesc } from './format.js';
import type { Vmdesc, VmdescStruct } from './format.js';
import { decodeByVmdesc, findVmdesc } from './vmdesc-decoder.js';
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
