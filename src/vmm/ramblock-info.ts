// QEMU's `x-query-ramblock` (QMP, since 7.0) and `info ramblock` (HMP): one line per RAM
// block with its name, page size, offset in the RAM address space (the blocks back to
// back), used and total length — laid out as QEMU 7.2's ram_block_format() prints it, so
// a guest larger than one block shows how its RAM is split.

import type { GuestMemoryBlock } from '../hypervisor/types.js';

const hex = (n: number): string => `0x${n.toString(16).padStart(16, '0')}`;

export function formatRamBlocks(blocks: readonly Pick<GuestMemoryBlock, 'idstr' | 'size'>[]): string {
  const lines = [`${'Block Name'.padStart(24)} ${'PSize'.padStart(8)}  ${'Offset'.padStart(18)} ${'Used'.padStart(18)} ${'Total'.padStart(18)}\n`];
  let offset = 0;
  for (const block of blocks) {
    // Guest pages are 4 KiB whatever backs them on the host (QEMU says 4 KiB under THP too).
    lines.push(`${block.idstr.padStart(24)} ${'4 KiB'.padStart(8)}  ${hex(offset)} ${hex(block.size)} ${hex(block.size)}\n`);
    offset += block.size;
  }
  return lines.join('');
}
