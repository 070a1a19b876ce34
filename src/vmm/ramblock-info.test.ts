import { test } from 'node:test';
import assert from 'node:assert/strict';
import { formatRamBlocks } from './ramblock-info.js';

test('x-query-ramblock\'s text: QEMU 7.2\'s columns, one line per block, offsets back to back', () => {
  // The header and the pc.ram line of QEMU 7.2's own answer for `-M pc -m 5G` (qemu-system-x86_64 7.2.22, by hand).
  const qemuHeader = '              Block Name    PSize              Offset               Used              Total\n';
  const qemuPcRam = '                  pc.ram    4 KiB  0x0000000000000000 0x0000000140000000 0x0000000140000000\n';
  assert.equal(formatRamBlocks([{ idstr: 'pc.ram', size: 0x140000000 }]), qemuHeader + qemuPcRam);
  assert.equal(formatRamBlocks([{ idstr: 'pc.ram', size: 0xe0000000 }, { idstr: 'pc.ram.1', size: 0x60000000 }]), qemuHeader
    + '                  pc.ram    4 KiB  0x0000000000000000 0x00000000e0000000 0x00000000e0000000\n'
    + '                pc.ram.1    4 KiB  0x00000000e0000000 0x0000000060000000 0x0000000060000000\n');
});
