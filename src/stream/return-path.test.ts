import { test } from 'node:test';
import assert from 'node:assert/strict';
import { StreamFormatError } from '../errors.js';
import { readSectionHeader } from './format.js';
import {
  MIG_CMD_OPEN_RETURN_PATH, MIG_CMD_PING, MIG_RP_MSG_PONG, MIG_RP_MSG_SHUT,
  be32Bytes, encodeRpMessage, precopyCommand, readRpMessage, writeCommand,
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
  assert.deepEqual(precopyCommand(open.command, open.data, open.offset), { type: 'open-return-path' });
  assert.deepEqual(precopyCommand(ping.command, ping.data, ping.offset), { type: 'ping', value: 1 });
  assert.equal(ping.offset, 5);
});

test('return path: postcopy and malformed commands are refused with the offset', () => {
  assert.throws(() => precopyCommand(3, new Uint8Array(16), 40), (err: unknown) => err instanceof StreamFormatError && err.offset === 40 && /Command 0x0003 at offset 40 is not supported/.test(err.message));
  assert.throws(() => precopyCommand(MIG_CMD_PING, new Uint8Array(2), 7), /carries 2 bytes, expected 4/);
  assert.throws(() => precopyCommand(MIG_CMD_OPEN_RETURN_PATH, new Uint8Array(1), 7), /carries 1 bytes, expected 0/);
});

test('return path: the destination\'s messages decode; a postcopy request or a bad length is refused; a clean end is null', async () => {
  const messages = new Uint8Array([...encodeRpMessage(MIG_RP_MSG_PONG, be32Bytes(1)), ...encodeRpMessage(MIG_RP_MSG_SHUT, be32Bytes(0))]);
  assert.equal(toHex(messages.subarray(0, 8)), '0002000400000001');
  const r = readerOf(messages, 5);
  assert.deepEqual(await readRpMessage(r), { type: 'pong', value: 1 });
  assert.deepEqual(await readRpMessage(r), { type: 'shut', value: 0 });
  assert.equal(await readRpMessage(r), null);
  await assert.rejects(readRpMessage(readerOf(encodeRpMessage(4, new Uint8Array(12)))), /invalid return-path message 0x0004 length 0x000c at offset 0 \(a postcopy request/);
  await assert.rejects(readRpMessage(readerOf(encodeRpMessage(MIG_RP_MSG_SHUT, new Uint8Array(2)))), /length 2, expected 4/);
  await assert.rejects(readRpMessage(readerOf(new Uint8Array([0, 1, 0, 4, 0]))), /return path/);
});
