import { test } from 'node:test';
import assert from 'node:assert/strict';
import { StreamFormatError } from '../errors.js';
import { readSectionHeader } from './format.js';
import {
  MAX_PACKAGED_BYTES, MIG_CMD_OPEN_RETURN_PATH, MIG_CMD_PACKAGED, MIG_CMD_PING, MIG_CMD_POSTCOPY_ADVISE,
  MIG_CMD_POSTCOPY_LISTEN, MIG_CMD_POSTCOPY_RAM_DISCARD, MIG_CMD_POSTCOPY_RUN, MIG_RP_MSG_PONG, MIG_RP_MSG_REQ_PAGES,
  MIG_RP_MSG_SHUT, be32Bytes, discardData, encodeCommand, encodePageRequest, encodeRpMessage, postcopyAdviseData,
  readRpMessage, streamCommand, writeCommand, MIG_CMD_RECV_BITMAP, MIG_CMD_POSTCOPY_RESUME, MIG_RP_MSG_RESUME_ACK,
  encodeRecvBitmap, recvBitmapData,
} from './return-path.js';
import { readerOf, toHex, writtenBytes } from './testing.js';

test('return path: the commands a source writes, byte for byte (QEMU_VM_COMMAND, be16 command, be16 length, data)', async () => {
  const bytes = await writtenBytes((w) => {
    writeCommand(w, MIG_CMD_OPEN_RETURN_PATH);
    writeCommand(w, MIG_CMD_PING, be32Bytes(1));
  });
  assert.equal(toHex(bytes), '08' + '0001' + '0000' + '08' + '0002' + '0004' + '00000001');
  const r = readerOf(bytes, 3);
  const open = await readSectionHeader(r);
  const ping = await readSectionHeader(r);
  assert.ok(open.kind === 'command' && ping.kind === 'command');
  assert.deepEqual(streamCommand(open.command, open.data, open.offset), { type: 'open-return-path' });
  assert.deepEqual(streamCommand(ping.command, ping.data, ping.offset), { type: 'ping', value: 1 });
  assert.equal(ping.offset, 5);
});

test('commands: COLO, post-copy recovery, unknown and malformed commands are refused with the offset', () => {
  assert.throws(() => streamCommand(8, new Uint8Array(0), 40), (err: unknown) => err instanceof StreamFormatError && err.offset === 40 && /Command 0x0008 at offset 40 is not supported \(ENABLE_COLO/.test(err.message));
  assert.throws(() => streamCommand(9, new Uint8Array(1), 40), /POSTCOPY_RESUME\) at offset 40 carries 1 bytes, expected 0/);
  assert.throws(() => streamCommand(10, new Uint8Array([5, 1]), 40), /RECV_BITMAP\) at offset 40 carries 2 bytes, expected 1 \+ the length/);
  assert.throws(() => streamCommand(0x42, new Uint8Array(0), 40), /0x0042 .*unknown/);
  assert.throws(() => streamCommand(MIG_CMD_PING, new Uint8Array(2), 7), /PING\) at offset 7 carries 2 bytes, expected 4/);
  assert.throws(() => streamCommand(MIG_CMD_OPEN_RETURN_PATH, new Uint8Array(1), 7), /carries 1 bytes, expected 0/);
  assert.throws(() => streamCommand(MIG_CMD_POSTCOPY_ADVISE, new Uint8Array(8), 7), /POSTCOPY_ADVISE\) at offset 7 carries 8 bytes, expected 0 or 16/);
  assert.throws(() => streamCommand(MIG_CMD_POSTCOPY_LISTEN, new Uint8Array(1), 7), /expected 0/);
  assert.throws(() => streamCommand(MIG_CMD_POSTCOPY_RUN, new Uint8Array(1), 7), /expected 0/);
  assert.throws(() => streamCommand(MIG_CMD_PACKAGED, new Uint8Array(2), 7), /expected 4/);
  assert.throws(() => streamCommand(MIG_CMD_PACKAGED, be32Bytes(MAX_PACKAGED_BYTES + 1), 7), /16777217 bytes, more than the 16777216/);
});

test('commands: post-copy\'s, byte for byte as QEMU 7.2 writes them, and back', () => {
  assert.equal(toHex(encodeCommand(MIG_CMD_POSTCOPY_ADVISE, postcopyAdviseData(4096, 4096))), '08' + '0003' + '0010' + '0000000000001000' + '0000000000001000');
  assert.deepEqual(streamCommand(MIG_CMD_POSTCOPY_ADVISE, postcopyAdviseData(4096, 4096), 0), { type: 'postcopy-advise', pageSizeSummary: 4096, targetPageSize: 4096 });
  assert.deepEqual(streamCommand(MIG_CMD_POSTCOPY_ADVISE, new Uint8Array(0), 0), { type: 'postcopy-advise' });
  assert.equal(toHex(encodeCommand(MIG_CMD_POSTCOPY_LISTEN)), '0800040000');
  assert.equal(toHex(encodeCommand(MIG_CMD_POSTCOPY_RUN)), '0800050000');
  assert.deepEqual(streamCommand(MIG_CMD_POSTCOPY_LISTEN, new Uint8Array(0), 0), { type: 'postcopy-listen' });
  assert.deepEqual(streamCommand(MIG_CMD_POSTCOPY_RUN, new Uint8Array(0), 0), { type: 'postcopy-run' });
  assert.deepEqual(streamCommand(MIG_CMD_PACKAGED, be32Bytes(1000), 0), { type: 'packaged', length: 1000 });
  // version 0, counted name, NUL, then be64 start / be64 length pairs in bytes.
  const discard = discardData('pc.ram', [{ start: 0x1000, length: 0x3000 }, { start: 2 ** 33, length: 0x1000 }]);
  assert.equal(toHex(discard), '00' + '06' + '70632e72616d' + '00' + '0000000000001000' + '0000000000003000' + '0000000200000000' + '0000000000001000');
  assert.deepEqual(streamCommand(MIG_CMD_POSTCOPY_RAM_DISCARD, discard, 0), {
    type: 'postcopy-ram-discard', idstr: 'pc.ram', ranges: [{ start: 0x1000, length: 0x3000 }, { start: 2 ** 33, length: 0x1000 }],
  });
  const bad = (mutate: (d: Uint8Array) => Uint8Array): Uint8Array => mutate(discardData('pc.ram', [{ start: 0, length: 4096 }]));
  assert.throws(() => streamCommand(MIG_CMD_POSTCOPY_RAM_DISCARD, bad((d) => { d[0] = 1; return d; }), 9), /version 1, expected 0/);
  assert.throws(() => streamCommand(MIG_CMD_POSTCOPY_RAM_DISCARD, bad((d) => { d[1] = 200; return d; }), 9), /name of 200 bytes does not fit/);
  assert.throws(() => streamCommand(MIG_CMD_POSTCOPY_RAM_DISCARD, bad((d) => { d[8] = 1; return d; }), 9), /not followed by its NUL/);
  assert.throws(() => streamCommand(MIG_CMD_POSTCOPY_RAM_DISCARD, bad((d) => d.subarray(0, d.byteLength - 1)), 9), /expected at least 20|not a whole number/);
  assert.throws(() => streamCommand(MIG_CMD_POSTCOPY_RAM_DISCARD, new Uint8Array(10), 9), /carries 10 bytes, expected at least 20/);
});

test('return path: page requests decode only where post-copy asked for them', async () => {
  const named = encodePageRequest(0x5000, 4096, 'pc.ram');
  assert.equal(toHex(named), '0003' + '0013' + '0000000000005000' + '00001000' + '06' + '70632e72616d');
  const plain = encodePageRequest(2 ** 32, 4096);
  assert.equal(toHex(plain), '0004' + '000c' + '0000000100000000' + '00001000');
  const r = readerOf(new Uint8Array([...named, ...plain]), 7);
  assert.deepEqual(await readRpMessage(r, true), { type: 'req-pages', start: 0x5000, length: 4096, idstr: 'pc.ram' });
  assert.deepEqual(await readRpMessage(r, true), { type: 'req-pages', start: 2 ** 32, length: 4096 });
  assert.equal(await readRpMessage(r, true), null);
  await assert.rejects(readRpMessage(readerOf(plain)), /0x0004 length 0x000c at offset 0 \(a post-copy message, and this migration is not doing post-copy/);
  await assert.rejects(readRpMessage(readerOf(encodeRpMessage(MIG_RP_MSG_REQ_PAGES, new Uint8Array(13))), true), /length 13, expected 12/);
  const badName = named.slice();
  badName[4 + 12] = 9;
  await assert.rejects(readRpMessage(readerOf(badName), true), /length 19, expected 13 \+ a block name/);
});

test('return path: the destination\'s messages decode; a postcopy request or a bad length is refused; a clean end is null', async () => {
  const messages = new Uint8Array([...encodeRpMessage(MIG_RP_MSG_PONG, be32Bytes(1)), ...encodeRpMessage(MIG_RP_MSG_SHUT, be32Bytes(0))]);
  assert.equal(toHex(messages.subarray(0, 8)), '0002000400000001');
  const r = readerOf(messages, 5);
  assert.deepEqual(await readRpMessage(r), { type: 'pong', value: 1 });
  assert.deepEqual(await readRpMessage(r), { type: 'shut', value: 0 });
  assert.equal(await readRpMessage(r), null);
  await assert.rejects(readRpMessage(readerOf(encodeRpMessage(4, new Uint8Array(12)))), /invalid return-path message 0x0004 length 0x000c at offset 0 \(a post-copy message/);
  await assert.rejects(readRpMessage(readerOf(encodeRpMessage(MIG_RP_MSG_SHUT, new Uint8Array(2)))), /length 2, expected 4/);
  await assert.rejects(readRpMessage(readerOf(new Uint8Array([0, 1, 0, 4, 0]))), /return path/);
});

test('post-copy recovery: RECV_BITMAP and POSTCOPY_RESUME, the received bitmap and RESUME_ACK on the return path, as QEMU 7.2 lays them out', async () => {
  assert.equal(toHex(encodeCommand(MIG_CMD_RECV_BITMAP, recvBitmapData('pc.ram'))), '08' + '000a' + '0007' + '06' + '70632e72616d');
  assert.deepEqual(streamCommand(MIG_CMD_RECV_BITMAP, recvBitmapData('pc.ram'), 0), { type: 'recv-bitmap', idstr: 'pc.ram' });
  assert.deepEqual(streamCommand(MIG_CMD_POSTCOPY_RESUME, new Uint8Array(0), 0), { type: 'postcopy-resume' });
  // 12 pages: two bytes of bitmap, padded to 8; page 0 and page 9 arrived.
  const bitmap = new Uint8Array([0x01, 0x02]);
  const bytes = encodeRecvBitmap('pc.ram', bitmap);
  assert.equal(toHex(bytes), '0005' + '0007' + '06' + '70632e72616d' + '0000000000000008' + '0102000000000000' + '0123456789abcdef');
  const ack = encodeRpMessage(MIG_RP_MSG_RESUME_ACK, be32Bytes(1));
  const r = readerOf(new Uint8Array([...bytes, ...ack]), 5);
  assert.deepEqual(await readRpMessage(r, true), { type: 'recv-bitmap', idstr: 'pc.ram', bitmap: new Uint8Array([1, 2, 0, 0, 0, 0, 0, 0]) });
  assert.deepEqual(await readRpMessage(r, true), { type: 'resume-ack', value: 1 });
  await assert.rejects(readRpMessage(readerOf(bytes)), /not doing post-copy/);
  const badEnd = bytes.slice();
  badEnd[badEnd.byteLength - 1] = 0;
  await assert.rejects(readRpMessage(readerOf(badEnd), true), /end mark 0x123456789abcd00, expected 0x123456789abcdef/);
  const badSize = bytes.slice();
  badSize[4 + 7 + 7] = 7;
  await assert.rejects(readRpMessage(readerOf(badSize), true), /7 bytes, not a multiple of 8/);
});
