import { test } from 'node:test';
import assert from 'node:assert/strict';
import { StreamFormatError, StreamTruncatedError, VmStateError } from '../errors.js';
import { asciiHex, fromHex, readerOf, toHex, writtenBytes } from '../stream/testing.js';
import { vmstateLoad, vmstateSample, vmstateSave, vmstateWarmUp } from './vmstate.js';
import type { VmStateDescription, VmStateValue } from './vmstate-types.js';
import { readSectionFooter } from '../stream/format.js';
import type { VmdescDevice } from '../stream/format.js';

const SCALARS: VmStateDescription = {
  name: 'scalars',
  version: 2,
  minimumVersion: 1,
  fields: [
    { name: 'u8', type: 'uint8' },
    { name: 'u16', type: 'uint16' },
    { name: 'u32', type: 'uint32' },
    { name: 'u64', type: 'uint64' },
    { name: 'i8', type: 'int8' },
    { name: 'i16', type: 'int16' },
    { name: 'i32', type: 'int32' },
    { name: 'i64', type: 'int64' },
    { name: 'flag', type: 'bool' },
    { name: 'added', type: 'uint16', sinceVersion: 2 },
  ],
};

const SCALAR_STATE: VmStateValue = {
  u8: 0xfe, u16: 0xbeef, u32: 0xdeadbeef, u64: 0x0102030405060708n,
  i8: -2, i16: -300, i32: -70000, i64: -5n, flag: true, added: 7,
};

async function save(desc: VmStateDescription, state: VmStateValue): Promise<{ bytes: Uint8Array; vmdesc: VmdescDevice }> {
  let vmdesc: VmdescDevice | undefined;
  const bytes = await writtenBytes((w) => {
    vmdesc = vmstateSave(w, desc, state);
  });
  return { bytes, vmdesc: vmdesc! };
}

test('vmstate: golden bytes of every scalar type, big-endian, two\'s complement', async () => {
  const { bytes, vmdesc } = await save(SCALARS, SCALAR_STATE);
  assert.equal(
    toHex(bytes),
    [
      'fe', // uint8
      'beef', // uint16
      'deadbeef', // uint32
      '0102030405060708', // uint64
      'fe', // int8 -2
      'fed4', // int16 -300
      'fffeee90', // int32 -70000
      'fffffffffffffffb', // int64 -5
      '01', // bool true
      '0007', // uint16 added in version 2
    ].join(''),
  );
  assert.deepEqual(vmdesc, {
    name: 'scalars', instance_id: 0, vmsd_name: 'scalars', version: 2,
    fields: [
      { name: 'u8', type: 'uint8', size: 1 }, { name: 'u16', type: 'uint16', size: 2 },
      { name: 'u32', type: 'uint32', size: 4 }, { name: 'u64', type: 'uint64', size: 8 },
      { name: 'i8', type: 'int8', size: 1 }, { name: 'i16', type: 'int16', size: 2 },
      { name: 'i32', type: 'int32', size: 4 }, { name: 'i64', type: 'int64', size: 8 },
      { name: 'flag', type: 'bool', size: 1 }, { name: 'added', type: 'uint16', size: 2 },
    ],
  });
  for (const chunk of [1, 3, 64]) {
    assert.deepEqual(await vmstateLoad(readerOf(bytes, chunk), SCALARS, 2, 'scalars'), SCALAR_STATE);
  }
});

test('vmstate: a field newer than the stream version is neither read nor set (sinceVersion)', async () => {
  const bytes = fromHex('fe beef deadbeef 0102030405060708 fe fed4 fffeee90 fffffffffffffffb 00');
  const r = readerOf(bytes);
  const loaded = await vmstateLoad(r, SCALARS, 1, 'scalars');
  assert.equal(loaded['flag'], false);
  assert.equal('added' in loaded, false);
  assert.equal(await r.atEnd(), true);
});

test('vmstate: version newer than the description or older than its minimum is refused', async () => {
  await assert.rejects(vmstateLoad(readerOf(new Uint8Array(64)), SCALARS, 3, 'scalars'), (e: unknown) =>
    e instanceof StreamFormatError && e.section === 'scalars' && /version 3 is newer than 2/.test(e.message));
  await assert.rejects(vmstateLoad(readerOf(new Uint8Array(64)), SCALARS, 0, 'scalars'), (e: unknown) =>
    e instanceof StreamFormatError && /version 0 is older than the minimum 1/.test(e.message));
});

const INNER: VmStateDescription = {
  name: 'inner', version: 1, minimumVersion: 1,
  fields: [{ name: 'a', type: 'uint8' }, { name: 'b', type: 'uint16' }],
};

const INNER_SUB: VmStateDescription = {
  name: 'inner/extra', version: 1, minimumVersion: 1, fields: [{ name: 'x', type: 'uint8' }],
};

const INNER_WITH_SUB: VmStateDescription = {
  name: 'inner', version: 1, minimumVersion: 1,
  fields: [{ name: 'a', type: 'uint8' }],
  subsections: [{ description: INNER_SUB, key: 'extra', needed: (s: VmStateValue) => s['extra'] !== undefined }],
};

const COMPOSITE: VmStateDescription = {
  name: 'dev', version: 3, minimumVersion: 1,
  fields: [
    { name: 'regs', type: 'uint32', count: 3 },
    { name: 'n', type: 'uint8' },
    { name: 'fifo', type: 'uint16', countField: 'n', maxLength: 16 },
    { name: 'len', type: 'uint32' },
    { name: 'blob', type: 'buffer', lengthField: 'len', maxLength: 64 },
    { name: 'fixed', type: 'buffer', size: 4 },
    { name: 'inner', type: 'struct', struct: INNER },
    { name: 'many', type: 'struct', struct: INNER, count: 2 },
    { name: 'varied', type: 'struct', struct: INNER_WITH_SUB, count: 2 },
    { name: 'tail', type: 'uint8' },
  ],
  subsections: [
    {
      description: { name: 'dev/pending', version: 2, minimumVersion: 1, fields: [{ name: 'irq', type: 'bool' }, { name: 'level', type: 'int32' }] },
      key: 'pending',
      needed: (s: VmStateValue) => s['pending'] !== undefined,
    },
    {
      description: { name: 'dev/never', version: 1, minimumVersion: 1, fields: [{ name: 'z', type: 'uint8' }] },
      key: 'never',
      needed: () => false,
    },
  ],
};

const COMPOSITE_STATE: VmStateValue = {
  regs: [1, 2, 3],
  n: 2,
  fifo: [0x1111, 0x2222],
  len: 3,
  blob: new Uint8Array([0xaa, 0xbb, 0xcc]),
  fixed: new Uint8Array([1, 2, 3, 4]),
  inner: { a: 5, b: 6 },
  many: [{ a: 7, b: 8 }, { a: 9, b: 10 }],
  varied: [{ a: 1 }, { a: 2, extra: { x: 0x55 } }],
  tail: 0x05, // the subsection marker value: must not be mistaken for one after a nested struct
  pending: { irq: true, level: -1 },
};

test('vmstate: golden bytes of arrays, buffers, structs and subsections', async () => {
  const { bytes } = await save(COMPOSITE, COMPOSITE_STATE);
  assert.equal(
    toHex(bytes),
    [
      '00000001 00000002 00000003', // regs: uint32[3]
      '02', // n
      '1111 2222', // fifo: uint16[n]
      '00000003', // len
      'aabbcc', // blob: buffer[len]
      '01020304', // fixed: buffer[4]
      '05 0006', // inner {a, b}
      '07 0008 09 000a', // many[2]
      '01', // varied[0] {a}, no subsection
      '02', '05', '0b', asciiHex('inner/extra'), '00000001', '55', // varied[1] {a} + SUBSECTION "inner/extra" v1 {x}
      '05', // tail
      '05', '0b', asciiHex('dev/pending'), '00000002', '01', 'ffffffff', // SUBSECTION "dev/pending" v2 {irq, level}
    ].join('').replace(/ /g, ''),
  );
});

test('vmstate: vmdesc describes arrays, structs and subsections as QEMU does', async () => {
  const { vmdesc } = await save(COMPOSITE, COMPOSITE_STATE);
  const innerDesc = { vmsd_name: 'inner', version: 1, fields: [{ name: 'a', type: 'uint8', size: 1 }, { name: 'b', type: 'uint16', size: 2 }] };
  assert.deepEqual(vmdesc, {
    name: 'dev', instance_id: 0, vmsd_name: 'dev', version: 3,
    fields: [
      { name: 'regs', array_len: 3, type: 'uint32', size: 4 }, // identical elements: compressed
      { name: 'n', type: 'uint8', size: 1 },
      { name: 'fifo', array_len: 2, type: 'uint16', size: 2 },
      { name: 'len', type: 'uint32', size: 4 },
      { name: 'blob', type: 'buffer', size: 3 },
      { name: 'fixed', type: 'buffer', size: 4 },
      { name: 'inner', type: 'struct', struct: innerDesc, size: 3 },
      { name: 'many', array_len: 2, type: 'struct', struct: innerDesc, size: 3 },
      // elements that differ (one has a subsection) are listed one by one with "index"
      { name: 'varied', index: 0, type: 'struct', struct: { vmsd_name: 'inner', version: 1, fields: [{ name: 'a', type: 'uint8', size: 1 }] }, size: 1 },
      {
        name: 'varied', index: 1, type: 'struct',
        struct: {
          vmsd_name: 'inner', version: 1, fields: [{ name: 'a', type: 'uint8', size: 1 }],
          subsections: [{ vmsd_name: 'inner/extra', version: 1, fields: [{ name: 'x', type: 'uint8', size: 1 }] }],
        },
        size: 1 + 1 + 1 + 11 + 4 + 1,
      },
      { name: 'tail', type: 'uint8', size: 1 },
    ],
    subsections: [{ vmsd_name: 'dev/pending', version: 2, fields: [{ name: 'irq', type: 'bool', size: 1 }, { name: 'level', type: 'int32', size: 4 }] }],
  });
});

test('vmstate: round trip of the composite state, in any chunking', async () => {
  const { bytes } = await save(COMPOSITE, COMPOSITE_STATE);
  for (const chunk of [1, 2, 7, 1000]) {
    const r = readerOf(bytes, chunk);
    const loaded = await vmstateLoad(r, COMPOSITE, 3, 'dev');
    assert.deepEqual(loaded, COMPOSITE_STATE);
    assert.equal(await r.atEnd(), true);
  }
});

test('vmstate: subsections load in any order; absent ones are absent', async () => {
  const desc: VmStateDescription = {
    name: 'd', version: 1, minimumVersion: 1, fields: [{ name: 'v', type: 'uint8' }],
    subsections: [
      { description: { name: 'd/a', version: 1, minimumVersion: 1, fields: [{ name: 'x', type: 'uint8' }] }, key: 'a', needed: () => true },
      { description: { name: 'd/b', version: 1, minimumVersion: 1, fields: [{ name: 'y', type: 'uint8' }] }, key: 'b', needed: () => true },
    ],
  };
  const swapped = fromHex(`09 05 03 ${asciiHex('d/b')} 00000001 22 05 03 ${asciiHex('d/a')} 00000001 11`);
  assert.deepEqual(await vmstateLoad(readerOf(swapped), desc, 1, 'd'), { v: 9, b: { y: 0x22 }, a: { x: 0x11 } });
  const none = fromHex('09 7e 00000000');
  assert.deepEqual(await vmstateLoad(readerOf(none), desc, 1, 'd'), { v: 9 });
});

test('vmstate: hostile input is refused with StreamFormatError naming section and offset', async () => {
  const cases: Array<[VmStateDescription, string, RegExp]> = [
    [{ name: 'b', version: 1, minimumVersion: 1, fields: [{ name: 'f', type: 'bool' }] }, '02', /bool value 2/],
    [COMPOSITE, '00000001 00000002 00000003 11', /17 elements, more than the 16 allowed/],
    [COMPOSITE, '00000001 00000002 00000003 00 ffffffff', /4294967295 bytes, more than the 64 allowed/],
    [{ name: 'd', version: 1, minimumVersion: 1, fields: [] }, `05 03 ${asciiHex('d/z')} 00000001`, /unknown subsection "d\/z"/],
    [
      { name: 'd', version: 1, minimumVersion: 1, fields: [], subsections: [{ description: INNER_SUB, key: 's', needed: () => true }] },
      `05 0b ${asciiHex('inner/extra')} 00000002 00`, /version 2 is newer than 1/,
    ],
    [
      { name: 'd', version: 1, minimumVersion: 1, fields: [], subsections: [{ description: INNER_SUB, key: 's', needed: () => true }] },
      `05 0b ${asciiHex('inner/extra')} 00000001 00 05 0b ${asciiHex('inner/extra')} 00000001 00`, /appears twice/,
    ],
    [
      { name: 'd', version: 1, minimumVersion: 1, fields: [{ name: 'n', type: 'int32' }, { name: 'a', type: 'uint8', countField: 'n' }] },
      'ffffffff', /not a non-negative integer/,
    ],
  ];
  for (const [desc, hex, message] of cases) {
    await assert.rejects(vmstateLoad(readerOf(fromHex(hex)), desc, 1, 'sec'), (e: unknown) => {
      assert.ok(e instanceof StreamFormatError, `${hex}: ${String(e)}`);
      assert.match(e.message, message);
      assert.equal(e.section, 'sec');
      assert.equal(typeof e.offset, 'number');
      return true;
    });
  }
});

test('vmstate: truncation at every offset is a StreamTruncatedError', async () => {
  const { bytes } = await save(COMPOSITE, COMPOSITE_STATE);
  // The trailing subsection is optional: cut right before it and followed by a footer
  // (as section data always is), the rest still loads.
  const optionalFrom = bytes.length - (1 + 1 + 11 + 4 + 1 + 4);
  for (let n = 0; n < bytes.length; n++) {
    if (n === optionalFrom) {
      const withFooter = new Uint8Array([...bytes.subarray(0, n), 0x7e, 0, 0, 0, 0]);
      const loaded = await vmstateLoad(readerOf(withFooter, 3), COMPOSITE, 3, 'dev');
      assert.equal('pending' in loaded, false);
      assert.equal(loaded['tail'], 5);
    }
    // As in a stream: the section's data, then its footer.
    const r = readerOf(bytes.subarray(0, n), 3);
    const attempt = vmstateLoad(r, COMPOSITE, 3, 'dev').then(() => readSectionFooter(r, 0, 'dev'));
    await assert.rejects(attempt, (e: unknown) => {
      assert.ok(e instanceof StreamTruncatedError, `cut at ${n}: ${String(e)}`);
      assert.equal((e as StreamTruncatedError).section, 'dev');
      return true;
    });
  }
});

test('vmstate: saving a state that does not match its description is a VmStateError', async () => {
  const bad: Array<[VmStateDescription, VmStateValue, RegExp]> = [
    [SCALARS, { ...SCALAR_STATE, u8: 256 }, /256 does not fit in uint8/],
    [SCALARS, { ...SCALAR_STATE, i8: -129 }, /does not fit in int8/],
    [SCALARS, { ...SCALAR_STATE, u64: 5 }, /expected a bigint/],
    [SCALARS, { ...SCALAR_STATE, u64: -1n }, /does not fit in uint64/],
    [SCALARS, { ...SCALAR_STATE, flag: 1 }, /expected a boolean/],
    [SCALARS, { ...SCALAR_STATE, u32: 1.5 }, /expected an integer/],
    [COMPOSITE, { ...COMPOSITE_STATE, regs: [1, 2] }, /array of 3 elements/],
    [COMPOSITE, { ...COMPOSITE_STATE, n: 3 }, /array of 3 elements/],
    [COMPOSITE, { ...COMPOSITE_STATE, len: 2 }, /Uint8Array of 2 bytes/],
    [COMPOSITE, { ...COMPOSITE_STATE, inner: null }, /state is null/],
    [{ name: 'x', version: 1, minimumVersion: 1, fields: [{ name: 'b', type: 'buffer', lengthField: 'nope' }] }, { b: new Uint8Array(1) }, /not an integer field/],
    [{ name: 'x', version: 1, minimumVersion: 1, fields: [{ name: 's', type: 'struct' }] }, { s: {} }, /struct without a description/],
  ];
  for (const [desc, state, message] of bad) {
    await assert.rejects(save(desc, state), (e: unknown) => e instanceof VmStateError && message.test(e.message), message.source);
  }
});

test('vmstate: vmstateSave takes the section identity for the vmdesc entry', async () => {
  let entry: VmdescDevice | undefined;
  await writtenBytes((w) => {
    entry = vmstateSave(w, INNER, { a: 1, b: 2 }, { idstr: 'cpu', instanceId: 3 });
  });
  assert.equal(entry!.name, 'cpu');
  assert.equal(entry!.instance_id, 3);
  assert.equal(entry!.vmsd_name, 'inner');
});

test('vmstate: uint64 count and length fields are usable when safe', async () => {
  const desc: VmStateDescription = {
    name: 'w', version: 1, minimumVersion: 1,
    fields: [{ name: 'n', type: 'uint64' }, { name: 'b', type: 'buffer', lengthField: 'n' }],
  };
  const { bytes } = await save(desc, { n: 2n, b: new Uint8Array([7, 8]) });
  assert.equal(toHex(bytes), '00000000000000020708');
  assert.deepEqual(await vmstateLoad(readerOf(bytes), desc, 1, 'w'), { n: 2n, b: new Uint8Array([7, 8]) });
  await assert.rejects(vmstateLoad(readerOf(fromHex('ffffffffffffffff')), desc, 1, 'w'), StreamFormatError);
});

test('vmstate: a sample has the description\'s shape and saves; the warm-up never throws', async () => {
  const sample = vmstateSample(COMPOSITE);
  assert.deepEqual(sample['regs'], [0, 0, 0]);
  assert.deepEqual(sample['fifo'], [], 'a counted array is empty, its count 0');
  assert.equal(sample['n'], 0);
  assert.deepEqual(sample['blob'], new Uint8Array(0));
  assert.deepEqual(sample['fixed'], new Uint8Array(4));
  assert.deepEqual(sample['pending'], { irq: false, level: 0 }, 'every subsection\'s state is there');
  const { bytes } = await save(COMPOSITE, sample);
  // It loads back as what it is: a valid state of that description.
  const loaded = await vmstateLoad(readerOf(bytes), COMPOSITE, COMPOSITE.version, 'dev');
  assert.deepEqual(loaded['regs'], [0, 0, 0]);
  assert.deepEqual(loaded['pending'], { irq: false, level: 0 });
  assert.deepEqual(vmstateSample(SCALARS), { u8: 0, u16: 0, u32: 0, u64: 0n, i8: 0, i16: 0, i32: 0, i64: 0n, flag: false, added: 0 });

  // A description whose `needed` cannot cope with a sample: the warm-up just does nothing.
  const picky: VmStateDescription = {
    ...SCALARS,
    subsections: [{ description: INNER_SUB, key: 'extra', needed: () => { throw new Error('not for samples'); } }],
  };
  assert.doesNotThrow(() => vmstateWarmUp(picky));
  assert.doesNotThrow(() => vmstateWarmUp(COMPOSITE, { regs: 'not an array' }));
  vmstateWarmUp(COMPOSITE);
});
