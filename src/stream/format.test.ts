import { test } from 'node:test';
import assert from 'node:assert/strict';
import { FerryError, StreamFormatError, StreamTruncatedError } from '../errors.js';
import {
  checkVmdesc, readHeader, readSectionFooter, readSectionHeader, readVmdesc, writeEof, writeHeader,
  writeSectionFooter, writeSectionPart, writeSectionStart, writeVmdesc,
} from './format.js';
import type { Vmdesc } from './format.js';
import { asciiHex, fromHex, readerOf, toHex, writtenBytes } from './testing.js';

test('format: header golden bytes', async () => {
  const bytes = await writtenBytes((w) => writeHeader(w, 'pc-i440fx-7.2'));
  assert.equal(
    toHex(bytes),
    [
      '5145564d', // be32 QEMU_VM_FILE_MAGIC "QEVM"
      '00000003', // be32 QEMU_VM_FILE_VERSION
      '07', // u8 QEMU_VM_CONFIGURATION
      '0000000d', // be32 machine type length (13)
      asciiHex('pc-i440fx-7.2'), // machine type, no NUL
    ].join(''),
  );
  const header = await readHeader(readerOf(bytes, 1));
  assert.deepEqual(header, { machineType: 'pc-i440fx-7.2' });
});

test('format: START, FULL, PART, END, footer and EOF golden bytes', async () => {
  const bytes = await writtenBytes((w) => {
    writeSectionStart(w, 'start', 0, 'ram', 0, 4);
    writeSectionPart(w, 'part', 0);
    writeSectionPart(w, 'end', 0);
    writeSectionStart(w, 'full', 2, 'serial', 1, 3);
    writeSectionFooter(w, 2);
    writeEof(w);
  });
  assert.equal(
    toHex(bytes),
    [
      '01', '00000000', '03', asciiHex('ram'), '00000000', '00000004', // START: id 0, idstr "ram", instance 0, version 4
      '02', '00000000', // PART: id 0
      '03', '00000000', // END: id 0
      '04', '00000002', '06', asciiHex('serial'), '00000001', '00000003', // FULL: id 2, "serial", instance 1, version 3
      '7e', '00000002', // QEMU_VM_SECTION_FOOTER, section id 2
      '00', // QEMU_VM_EOF
    ].join(''),
  );
  const r = readerOf(bytes, 3);
  assert.deepEqual(await readSectionHeader(r), { kind: 'start', sectionId: 0, idstr: 'ram', instanceId: 0, versionId: 4 });
  assert.deepEqual(await readSectionHeader(r), { kind: 'part', sectionId: 0 });
  assert.deepEqual(await readSectionHeader(r), { kind: 'end', sectionId: 0 });
  assert.deepEqual(await readSectionHeader(r), { kind: 'full', sectionId: 2, idstr: 'serial', instanceId: 1, versionId: 3 });
  await readSectionFooter(r, 2, 'serial');
  assert.deepEqual(await readSectionHeader(r), { kind: 'eof' });
  assert.equal(await readVmdesc(r), null);
});

const VMDESC: Vmdesc = {
  page_size: 4096,
  devices: [
    { name: 'serial', instance_id: 0, vmsd_name: 'serial', version: 3, fields: [{ name: 'ier', type: 'uint8', size: 1 }] },
  ],
};

test('format: vmdesc golden bytes and round trip', async () => {
  const bytes = await writtenBytes((w) => writeVmdesc(w, VMDESC));
  const json = JSON.stringify(VMDESC);
  assert.equal(
    toHex(bytes),
    [
      '06', // QEMU_VM_VMDESCRIPTION
      json.length.toString(16).padStart(8, '0'), // be32 JSON length
      asciiHex(json), // the JSON, no terminator
    ].join(''),
  );
  assert.deepEqual(await readVmdesc(readerOf(bytes, 7)), VMDESC);
});

test('format: header with QEMU configuration subsections (target-page-bits, capabilities, uuid)', async () => {
  const bytes = fromHex(
    [
      '5145564d 00000003 07 00000002', asciiHex('pc'),
      '05', (30).toString(16), asciiHex('configuration/target-page-bits'), '00000001', '0000000c',
      '05', (26).toString(16), asciiHex('configuration/capabilities'), '00000001', '00000001', '0f', asciiHex('x-ignore-shared'),
      '05', (18).toString(16), asciiHex('configuration/uuid'), '00000001', '00112233445566778899aabbccddeeff',
      '00', // EOF follows
    ].join(''),
  );
  const r = readerOf(bytes, 5);
  const h = await readHeader(r);
  assert.equal(h.machineType, 'pc');
  assert.equal(h.targetPageBits, 12);
  assert.deepEqual(h.capabilities, ['x-ignore-shared']);
  assert.equal(toHex(h.uuid!), '00112233445566778899aabbccddeeff');
  assert.deepEqual(await readSectionHeader(r), { kind: 'eof' });
});

test('format: a header written with a UUID carries QEMU\'s configuration/uuid subsection, and reads back', async () => {
  const uuid = fromHex('00112233445566778899aabbccddeeff');
  const bytes = await writtenBytes((w) => writeHeader(w, 'pc', { uuid }));
  assert.equal(toHex(bytes), ['5145564d', '00000003', '07', '00000002', asciiHex('pc'), '05', (18).toString(16), asciiHex('configuration/uuid'), '00000001', '00112233445566778899aabbccddeeff'].join(''));
  assert.equal(toHex((await readHeader(readerOf(bytes, 3))).uuid!), '00112233445566778899aabbccddeeff');
  assert.equal((await readHeader(readerOf(await writtenBytes((w) => writeHeader(w, 'pc'))))).uuid, undefined, 'none without one');
  await assert.rejects(writtenBytes((w) => writeHeader(w, 'pc', { uuid: new Uint8Array(15) })), /UUID of 15 bytes/);
});

test('format: a header written with capabilities carries configuration/capabilities before the uuid, as QEMU\'s', async () => {
  const uuid = fromHex('00112233445566778899aabbccddeeff');
  const bytes = await writtenBytes((w) => writeHeader(w, 'pc', { uuid, capabilities: ['x-ignore-shared'] }));
  assert.equal(toHex(bytes), [
    '5145564d', '00000003', '07', '00000002', asciiHex('pc'),
    '05', (26).toString(16), asciiHex('configuration/capabilities'), '00000001', '00000001', '0f', asciiHex('x-ignore-shared'),
    '05', (18).toString(16), asciiHex('configuration/uuid'), '00000001', '00112233445566778899aabbccddeeff',
  ].join(''));
  const header = await readHeader(readerOf(bytes, 4));
  assert.deepEqual(header.capabilities, ['x-ignore-shared']);
  assert.equal(toHex(header.uuid!), '00112233445566778899aabbccddeeff');
});

test('format: header refuses bad magic, version 2, other versions, a missing configuration, odd page bits', async () => {
  const cases: Array<[string, RegExp]> = [
    ['5145564e 00000003 07 00000000', /magic/],
    ['5145564d 00000002 07 00000000', /obsolete/],
    ['5145564d 00000004 07 00000000', /version 4 is not 3/],
    ['5145564d 00000003 04 00000000', /Configuration section missing/],
    ['5145564d 00000003 07 00100000', /machine type length/],
    [`5145564d 00000003 07 00000000 05 1e ${asciiHex('configuration/target-page-bits')} 00000001 0000000d`, /TARGET_PAGE_BITS is 13/],
    [`5145564d 00000003 07 00000000 05 12 ${asciiHex('configuration/what')} 00000001`, /unknown subsection "configuration\/what"/],
    [`5145564d 00000003 07 00000000 05 12 ${asciiHex('configuration/uuid')} 00000002`, /newer than 1/],
  ];
  for (const [hex, message] of cases) {
    await assert.rejects(readHeader(readerOf(fromHex(hex))), (e: unknown) => e instanceof StreamFormatError && message.test(e.message), hex);
  }
});

test('format: unknown section types are StreamFormatErrors naming the offset', async () => {
  // 0x08, QEMU_VM_COMMAND, is a section type now: return-path.test.ts checks its commands.
  for (const type of [0x05, 0x06, 0x07, 0x7e, 0x09, 0xff]) {
    const r = readerOf(fromHex(`00 ${type.toString(16).padStart(2, '0')} 00000000`));
    await r.ensure(1);
    r.u8();
    await assert.rejects(readSectionHeader(r), (e: unknown) => e instanceof StreamFormatError && e.offset === 1 && /Unknown section type/.test(e.message));
  }
});

test('format: footer mismatch and missing footer', async () => {
  await assert.rejects(readSectionFooter(readerOf(fromHex('7e00000003')), 2, 'serial'), (e: unknown) => e instanceof StreamFormatError && /read 3, expected 2/.test(e.message) && e.section === 'serial');
  await assert.rejects(readSectionFooter(readerOf(fromHex('0000000002')), 2, 'serial'), (e: unknown) => e instanceof StreamFormatError && /Missing section footer for "serial"/.test(e.message));
});

test('format: vmdesc refuses a wrong marker, huge length, bad JSON and bad shapes', async () => {
  await assert.rejects(readVmdesc(readerOf(fromHex('07 00000002 7b7d'))), /Expected the vmdesc/);
  await assert.rejects(readVmdesc(readerOf(fromHex('06 7fffffff'))), /exceeds/);
  await assert.rejects(readVmdesc(readerOf(fromHex(`06 00000003 ${asciiHex('{x}')}`))), (e: unknown) => e instanceof StreamFormatError && /JSON/.test(e.message));
  const shapes: unknown[] = [
    [], {}, { page_size: -1, devices: [] }, { page_size: 4096, devices: {} },
    { page_size: 4096, devices: [{ name: 1, instance_id: 0, fields: [] }] },
    { page_size: 4096, devices: [{ name: 'a', instance_id: 0, fields: [{ name: 'x', type: 'struct', size: 1 }] }] },
    { page_size: 4096, devices: [{ name: 'a', instance_id: 0, fields: [{ name: 'x', type: 'uint8', size: 1.5 }] }] },
  ];
  for (const shape of shapes) assert.throws(() => checkVmdesc(shape), StreamFormatError, JSON.stringify(shape));
});

test('format: truncation at every offset of a small stream is a StreamTruncatedError', async () => {
  const bytes = await writtenBytes((w) => {
    writeHeader(w, 'pc');
    writeSectionStart(w, 'full', 1, 'dev', 0, 1);
    writeSectionFooter(w, 1);
    writeEof(w);
    writeVmdesc(w, VMDESC);
  });
  const parse = async (data: Uint8Array): Promise<void> => {
    const r = readerOf(data, 3);
    await readHeader(r);
    const h = await readSectionHeader(r);
    assert.equal(h.kind, 'full');
    await readSectionFooter(r, 1, 'dev');
    assert.equal((await readSectionHeader(r)).kind, 'eof');
    const vmdesc = await readVmdesc(r);
    if (vmdesc === null) throw new StreamTruncatedError('vmdesc missing', r.offset);
  };
  await parse(bytes);
  for (let n = 0; n < bytes.length; n++) {
    await assert.rejects(parse(bytes.subarray(0, n)), (e: unknown) => {
      assert.ok(e instanceof FerryError, `cut at ${n}: ${String(e)}`);
      assert.ok(e instanceof StreamTruncatedError, `cut at ${n}: ${(e as Error).message}`);
      return true;
    });
  }
});

test('format: writing refuses idstrs over 255 bytes and out-of-range ids', async () => {
  await assert.rejects(writtenBytes((w) => writeSectionStart(w, 'full', 0, 'x'.repeat(256), 0, 1)), StreamFormatError);
  await assert.rejects(writtenBytes((w) => writeSectionPart(w, 'part', -1)), StreamFormatError);
  await assert.rejects(writtenBytes((w) => writeSectionStart(w, 'start', 0, 'ram', 2 ** 32, 1)), StreamFormatError);
});
