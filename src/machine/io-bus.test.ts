import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PortIoBus, type PortDevice } from './io-bus.js';

function recorder(readValue: number): PortDevice & { writes: Array<[number, number, number]>; reads: number[] } {
  const device = {
    writes: [] as Array<[number, number, number]>,
    reads: [] as number[],
    pioRead: (port: number) => {
      device.reads.push(port);
      return readValue;
    },
    pioWrite: (port: number, size: 1 | 2 | 4, value: number) => {
      device.writes.push([port, size, value]);
    },
  };
  return device;
}

test('io bus: accesses reach the device that claimed the port, with port, size and value', () => {
  const bus = new PortIoBus();
  const serial = recorder(0x60);
  const other = recorder(0x11);
  bus.register('serial', 0x3f8, 8, serial);
  bus.register('other', 0x2f8, 8, other);
  bus.pioWrite(0x3f8, 1, 0x41);
  bus.pioWrite(0x2ff, 2, 0x1234);
  assert.equal(bus.pioRead(0x3fd, 1), 0x60);
  assert.equal(bus.pioRead(0x2f8, 4), 0x11);
  assert.equal(bus.pioRead(0x3f8, 1), 0x60, 'the one-entry cache hands back the right device after a switch');
  assert.deepEqual(serial.writes, [[0x3f8, 1, 0x41]]);
  assert.deepEqual(other.writes, [[0x2ff, 2, 0x1234]]);
  assert.deepEqual(serial.reads, [0x3fd, 0x3f8]);
});

test('io bus: an unclaimed port reads all ones (a floating ISA bus) and ignores writes', () => {
  const bus = new PortIoBus();
  assert.equal(bus.pioRead(0x80, 1), 0xff);
  assert.equal(bus.pioRead(0x80, 2), 0xffff);
  assert.equal(bus.pioRead(0x80, 4), 0xffffffff);
  bus.pioWrite(0x80, 1, 1);
  assert.equal(bus.mmioRead(0xfee00000, 4), 0);
  bus.mmioWrite(0xfee00000, 4, 1);
});

test('io bus: a range that overlaps a claimed one is refused, naming both devices', () => {
  const bus = new PortIoBus();
  bus.register('serial', 0x3f8, 8, recorder(0));
  assert.throws(() => bus.register('clash', 0x3fc, 8, recorder(0)), /0x3fc\+8 of clash overlap serial/);
  bus.register('next door', 0x400, 1, recorder(0));
});
