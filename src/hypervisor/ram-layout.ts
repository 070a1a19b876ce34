// Guest RAM larger than one block. A block is what the migration stream names and what
// TypeScript sees as one Uint8Array, and a view is at most 4 GiB (koffi.view; V8's typed
// arrays stop there too), so a larger guest's RAM is several blocks over one host mapping:
// "pc.ram" from guest address 0 up to the accelerator's limit below 4 GiB, then "pc.ram.1",
// "pc.ram.2", … of at most 4 GiB each from guest address 4 GiB, as a PC places the RAM a
// 32-bit PCI hole displaces (QEMU's ram-below-4g / ram-above-4g). A guest of up to 4 GiB
// (the sim) or below the hole (KVM) keeps the one "pc.ram" block it always had, so its
// streams are unchanged.

/** The largest block: one view of guest RAM. */
export const RAM_BLOCK_MAX_BYTES = 2 ** 32;

/** Where RAM above the first block starts in guest-physical memory. */
export const HIGH_RAM_BASE = 2 ** 32;

/** The largest guest RAM Ferry runs: far above what these machines hold, and well inside the stream's block count. */
export const MAX_GUEST_RAM = 2 ** 40;

/** The first block's name, as QEMU's pc machines name their RAM. */
export const RAM_IDSTR = 'pc.ram';

export interface RamBlockPlan {
  readonly idstr: string;
  /** Guest-physical address of the block's first byte. */
  readonly guestAddress: number;
  /** Where the block starts in the host mapping that holds all of guest RAM. */
  readonly offset: number;
  readonly size: number;
}

/**
 * The blocks of `size` bytes of guest RAM: the first up to `lowLimit` bytes at guest address
 * 0, the rest in blocks of at most 4 GiB from guest address 4 GiB, back to back in the host
 * mapping. `lowLimit` is where the accelerator's 32-bit hole begins (4 GiB: none). `name`
 * is the first block's (a memory backend's id; "pc.ram" by default), the others add ".N".
 */
export function planRamBlocks(size: number, lowLimit = RAM_BLOCK_MAX_BYTES, name = RAM_IDSTR): RamBlockPlan[] {
  if (!Number.isSafeInteger(size) || size <= 0) throw new RangeError(`Cannot lay out ${size} bytes of guest RAM`);
  if (!Number.isSafeInteger(lowLimit) || lowLimit <= 0 || lowLimit > HIGH_RAM_BASE) {
    throw new RangeError(`Cannot lay out guest RAM below ${lowLimit}: the first block ends at most at 4 GiB`);
  }
  const blocks: RamBlockPlan[] = [{ idstr: name, guestAddress: 0, offset: 0, size: Math.min(size, lowLimit) }];
  let offset = blocks[0]!.size;
  while (offset < size) {
    const n = blocks.length;
    const length = Math.min(size - offset, RAM_BLOCK_MAX_BYTES);
    blocks.push({ idstr: `${name}.${n}`, guestAddress: HIGH_RAM_BASE + (n - 1) * RAM_BLOCK_MAX_BYTES, offset, size: length });
    offset += length;
  }
  return blocks;
}
