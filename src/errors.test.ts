import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  ConfigError, FerryError, GuestCrashError, KvmUnavailableError, MigrationCancelledError, MigrationError,
  QmpError, StreamFormatError, StreamTruncatedError, SystemCallError, TransportError, VmStateError, errorMessage,
  streamErrorMessage,
} from './errors.js';

test('every error has a stable code, its own name, and is a FerryError', () => {
  const cases: Array<[FerryError, string, string]> = [
    [new ConfigError('x'), 'FERRY_ERR_CONFIG', 'ConfigError'],
    [new SystemCallError('ioctl', 22, 'x'), 'FERRY_ERR_SYSCALL', 'SystemCallError'],
    [new KvmUnavailableError('x'), 'FERRY_ERR_KVM_UNAVAILABLE', 'KvmUnavailableError'],
    [new GuestCrashError('x', 'RIP=0'), 'FERRY_ERR_GUEST_CRASH', 'GuestCrashError'],
    [new StreamFormatError('x', 12, 'ram'), 'FERRY_ERR_STREAM_FORMAT', 'StreamFormatError'],
    [new StreamTruncatedError('x', 12), 'FERRY_ERR_STREAM_TRUNCATED', 'StreamTruncatedError'],
    [new TransportError('x'), 'FERRY_ERR_TRANSPORT', 'TransportError'],
    [new MigrationError('x'), 'FERRY_ERR_MIGRATION', 'MigrationError'],
    [new MigrationCancelledError(), 'FERRY_ERR_MIGRATION_CANCELLED', 'MigrationCancelledError'],
    [new QmpError('CommandNotFound', 'x'), 'FERRY_ERR_QMP', 'QmpError'],
    [new VmStateError('x'), 'FERRY_ERR_VMSTATE', 'VmStateError'],
  ];
  for (const [err, code, name] of cases) {
    assert.ok(err instanceof FerryError && err instanceof Error, name);
    assert.equal(err.code, code);
    assert.equal(err.name, name);
  }
});

test('errors keep what callers act on: offset and section, errno, QMP class, register dump, cause', () => {
  const cause = new Error('socket hang up');
  const stream = new StreamFormatError('bad footer', 4105, 'serial', { cause });
  assert.equal(stream.offset, 4105);
  assert.equal(stream.section, 'serial');
  assert.equal(stream.cause, cause);
  assert.equal(new SystemCallError('mmap', 12, 'x').errno, 12);
  assert.equal(new QmpError('DeviceNotActive', 'x').errorClass, 'DeviceNotActive');
  assert.equal(new GuestCrashError('x', 'RIP=10000').registerDump, 'RIP=10000');
  assert.equal(new MigrationCancelledError().message, 'Migration was cancelled');
  assert.equal(errorMessage(new TransportError('refused')), 'refused');
  assert.equal(errorMessage('plain'), 'plain');
});

test('a stream error reported by a destination says where the stream broke', () => {
  // A page's offset in its block is not the stream's: the stream offset is added.
  assert.equal(
    streamErrorMessage(new StreamFormatError('Cannot load RAM page at offset 4096 of block "pc.ram" (8192 bytes)', 70123, 'ram')),
    'Cannot load RAM page at offset 4096 of block "pc.ram" (8192 bytes) (stream offset 70123, section "ram")',
  );
  assert.equal(streamErrorMessage(new StreamTruncatedError('x', 9)), 'x (stream offset 9)');
  // A message that already gives the stream offset is left as it is.
  const named = 'Stream ended at offset 812 in section "serial": needed 2 bytes at offset 810, only 0 remain';
  assert.equal(streamErrorMessage(new StreamTruncatedError(named, 810, 'serial')), named);
  // Other errors: the message alone.
  assert.equal(streamErrorMessage(new TransportError('peer gone')), 'peer gone');
  assert.equal(streamErrorMessage('plain'), 'plain');
});
