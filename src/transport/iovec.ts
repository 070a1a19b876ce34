// Arrays of struct iovec built in JavaScript, for readv(2) and writev(2): per entry an
// address and a length, 64-bit little-endian words (x86_64). No Node imports: the stream
// code fills them as the transports do.

/** Bytes of one struct iovec on x86_64: a pointer, then a size_t. */
export const IOVEC_BYTES = 16;
const TWO_32 = 0x100000000;

/** Entry `entry` of `entries`: `length` bytes at `address`. */
export function setIovec(entries: DataView, entry: number, address: number, length: number): void {
  const at = entry * IOVEC_BYTES;
  entries.setUint32(at, address >>> 0, true);
  entries.setUint32(at + 4, Math.floor(address / TWO_32), true);
  entries.setUint32(at + 8, length >>> 0, true);
  entries.setUint32(at + 12, Math.floor(length / TWO_32), true);
}

/**
 * The kernel took (or filled) `n` bytes from entry `first` on, up to `end`: returns the
 * first entry not done. An entry done in part is moved on in place, so that the next call
 * goes on from there.
 */
export function consumeIovec(entries: DataView, first: number, end: number, n: number): number {
  while (n > 0 && first < end) {
    const at = first * IOVEC_BYTES;
    const length = entries.getUint32(at + 8, true) + entries.getUint32(at + 12, true) * TWO_32;
    if (n >= length) {
      n -= length;
      first++;
      continue;
    }
    const address = entries.getUint32(at, true) + entries.getUint32(at + 4, true) * TWO_32;
    setIovec(entries, first, address + n, length - n);
    n = 0;
  }
  return first;
}
