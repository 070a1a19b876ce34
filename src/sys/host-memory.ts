// Guest RAM as the host holds it: anonymous private memory from mmap, with the two
// things a migration wants from the kernel that Node cannot ask for — which pages were
// never touched (mincore: they must read as zero) and backing a range in one go
// (MADV_POPULATE_WRITE), because a page fault taken from JavaScript costs tens of µs on
// these machines while the kernel populates gigabytes per second.

import { debuglog } from 'node:util';
import { MADV_DONTNEED, MADV_POPULATE_WRITE, mincore, mmapAnonymous, madviseRange, type Mapping } from './libc.js';

const trace = debuglog('ferry');
const PAGE = 4096;

export class HostMemory {
  readonly mapping: Mapping;
  private populateWorks = true;

  private constructor(mapping: Mapping) {
    this.mapping = mapping;
  }

  /** Zero-filled memory that costs nothing until touched. */
  static allocate(size: number): HostMemory {
    return new HostMemory(mmapAnonymous(size));
  }

  get address(): bigint {
    return this.mapping.address;
  }

  get bytes(): Uint8Array {
    return this.mapping.bytes;
  }

  get size(): number {
    return this.mapping.length;
  }

  /** One byte per page: bit 0 set where the page is resident (has ever been touched). */
  residency(): Uint8Array {
    const vec = new Uint8Array(Math.ceil(this.size / PAGE));
    mincore(this.address, this.size, vec);
    return vec;
  }

  /** Back [offset, offset + length) with memory now; a no-op where the kernel cannot. */
  populate(offset: number, length: number): void {
    if (!this.populateWorks || length <= 0) return;
    const start = Math.max(0, offset - (offset % PAGE));
    const end = Math.min(this.size, offset + length);
    const errno = madviseRange(this.address + BigInt(start), end - start, MADV_POPULATE_WRITE);
    if (errno !== 0) {
      // EINVAL: a kernel older than 5.14. Pages then fault in as they are written.
      trace('MADV_POPULATE_WRITE failed with errno %d; guest RAM will fault in page by page', errno);
      this.populateWorks = false;
    }
  }

  /**
   * Give the memory back to the kernel. The mapping itself stays (it then reads as zero)
   * rather than being unmapped: a view that outlives its VM would otherwise crash the
   * whole process on its next access instead of reading zeros; with MAP_NORESERVE the
   * address range costs nothing.
   */
  release(): void {
    madviseRange(this.address, this.size, MADV_DONTNEED);
  }
}
