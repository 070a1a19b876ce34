// QMP `pmemsave` (QEMU's qmp_pmemsave): guest-physical memory [val, val + size) written
// to a file, as the guest sees it. Addresses no RAM block covers read as zeros, as QEMU's
// unassigned memory does. Ferry has no device memory to show there.

import { open } from 'node:fs/promises';
import type { GuestMemoryBlock } from '../hypervisor/types.js';

/** Zeros to write for a stretch no block covers, a piece at a time. */
const ZEROS = new Uint8Array(1024 * 1024);

export async function pmemsave(memory: readonly GuestMemoryBlock[], val: number, size: number, filename: string): Promise<void> {
  if (!Number.isSafeInteger(val) || val < 0) throw new RangeError(`Invalid parameter 'val': ${val} is not a guest-physical address`);
  if (!Number.isSafeInteger(size) || size < 0) throw new RangeError(`Invalid parameter 'size': ${size} is not a byte count`);
  let file;
  try {
    file = await open(filename, 'w', 0o600);
  } catch (err) {
    throw new Error(`Could not open '${filename}': ${(err as Error).message}`, { cause: err });
  }
  try {
    const end = val + size;
    const blocks = [...memory].sort((a, b) => a.guestAddress - b.guestAddress);
    for (let at = val; at < end;) {
      const block = blocks.find((b) => at >= b.guestAddress && at < b.guestAddress + b.size);
      if (block !== undefined) {
        const from = at - block.guestAddress;
        const n = Math.min(end - at, block.size - from);
        await writeAll(file, block.bytes.subarray(from, from + n));
        at += n;
        continue;
      }
      // Up to the next block (or the end): zeros.
      const next = blocks.find((b) => b.guestAddress > at)?.guestAddress ?? end;
      const gapEnd = Math.min(next, end);
      for (; at < gapEnd;) {
        const n = Math.min(ZEROS.byteLength, gapEnd - at);
        await writeAll(file, ZEROS.subarray(0, n));
        at += n;
      }
    }
  } finally {
    await file.close();
  }
}

async function writeAll(file: import('node:fs/promises').FileHandle, bytes: Uint8Array): Promise<void> {
  // At most 1 GiB per write: write(2) takes at most 0x7ffff000 bytes at once.
  for (let at = 0; at < bytes.byteLength;) {
    const { bytesWritten } = await file.write(bytes, at, Math.min(bytes.byteLength - at, 1 << 30));
    at += bytesWritten;
  }
}
