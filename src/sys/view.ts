// A view of memory by address, for a thread that did not map it: the sim's workload worker
// sees guest RAM this way. Kept apart from libc.ts so such a worker loads koffi alone,
// not the libc bindings it never calls (~10 ms of its start-up here).

import koffi from 'koffi';

/** The largest mapping koffi.view can expose (measured: 4 GiB works, more aborts). */
export const MAX_VIEW_BYTES = 2 ** 32;

/** A view of memory mapped elsewhere in this process (another thread's mapping), by address. */
export function viewAt(address: bigint, length: number): Uint8Array {
  if (!Number.isSafeInteger(length) || length <= 0 || length > MAX_VIEW_BYTES) {
    throw new RangeError(`Cannot view ${length} bytes: 1 byte to ${MAX_VIEW_BYTES} bytes (4 GiB)`);
  }
  // SAFETY: the caller guarantees the mapping at `address` outlives the view.
  return new Uint8Array(koffi.view(address as unknown as object, length));
}
