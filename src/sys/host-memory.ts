// Guest RAM as the host holds it: anonymous private memory from mmap, with the two
// things a migration wants from the kernel that Node cannot ask for — which pages were
// never backed (page-residency.ts: they must read as zero) and backing a range in one go
// (MADV_POPULATE_WRITE), because a page fault taken from JavaScript costs tens of µs on
// these machines while the kernel populates gigabytes per second. Or a file mapped as
// QEMU's memory-backend-file maps it (share=on: another process may map the same memory).

import { closeSync, constants, fstatSync, ftruncateSync, mkdtempSync, openSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { debuglog } from 'node:util';
import { ConfigError } from '../errors.js';
import {
  MADV_DONTNEED, MADV_HUGEPAGE, MADV_POPULATE_WRITE, MAP_PRIVATE, MAP_SHARED, PROT_READ, PROT_WRITE,
  addressOf, mmapAnonymousUnseen, mmapUnseen, madviseRange, madviseRangeInBackground, munmap, viewAt, MAX_VIEW_BYTES, type MappedRange,
} from './libc.js';
import type { AcceleratorConfig, GuestMemoryBlock, MemoryFile } from '../hypervisor/types.js';
import { MAX_GUEST_RAM } from '../hypervisor/ram-layout.js';
import { residencyAt } from './page-residency.js';

const trace = debuglog('ferry');
const PAGE = 4096;

/** Transparent huge pages come in 2 MiB; guest RAM is aligned to them. */
const HUGE_PAGE = 2 * 1024 * 1024;

export class HostMemory {
  /** The whole mapping: guest RAM plus up to 2 MiB before it, for the alignment. */
  readonly mapping: MappedRange;
  /** The 2 MiB-aligned start of guest RAM inside the mapping. */
  readonly address: bigint;
  readonly size: number;
  /**
   * A view of the first 4 GiB (all of guest RAM for most guests): where a guest's code and
   * parameters go. Larger RAM is seen a block at a time (block(), regionAt()).
   */
  readonly bytes: Uint8Array;
  /** The file mapped, for memory a file backs; undefined for anonymous memory. */
  readonly file: MemoryFile | undefined;
  private populateWorks = true;
  /** Every page is backed already (--mem-prealloc): populating is a no-op, not a system call. */
  private allBacked = false;

  private constructor(mapping: MappedRange, size: number, file?: MemoryFile) {
    this.mapping = mapping;
    this.file = file;
    // Anonymous memory starts at the first 2 MiB boundary of its mapping; a file's first
    // byte is where its mapping starts.
    this.address = file !== undefined ? mapping.address : (mapping.address + BigInt(HUGE_PAGE - 1)) & ~BigInt(HUGE_PAGE - 1);
    this.size = size;
    this.bytes = viewAt(this.address, Math.min(size, MAX_VIEW_BYTES));
  }

  /**
   * Zero-filled memory that costs nothing until touched, backed by transparent huge
   * pages where the kernel offers them (as QEMU asks for guest RAM): on these machines
   * the first touch of each 4 KiB page traps to the hypervisor below (~8-40 µs), while a
   * 2 MiB page takes one trap for 512 of them. One mapping however large; each view of it
   * (a block) is at most 4 GiB.
   */
  static allocate(size: number, options?: { prealloc?: boolean; file?: { readonly path: string; readonly share: boolean } }): HostMemory {
    if (!Number.isSafeInteger(size) || size <= 0 || size > MAX_GUEST_RAM) {
      throw new RangeError(`Cannot allocate ${size} bytes of guest RAM: 1 byte to ${MAX_GUEST_RAM} bytes (1 TiB)`);
    }
    const memory = options?.file !== undefined ? HostMemory.#fromFile(size, options.file.path, options.file.share) : new HostMemory(mmapAnonymousUnseen(size + HUGE_PAGE), size);
    const errno = madviseRange(memory.address, size, MADV_HUGEPAGE);
    if (errno !== 0) trace('MADV_HUGEPAGE failed with errno %d; guest RAM uses 4 KiB pages', errno);
    // QEMU's -mem-prealloc: pay for backing every page now rather than while the guest
    // (or an incoming migration, which writes every page) first touches it.
    if (options?.prealloc) {
      memory.populate(0, size);
      memory.allBacked = memory.populateWorks;
    }
    return memory;
  }

  /**
   * [offset, offset + size) of this memory as a guest RAM block at `guestAddress`, as the
   * accelerator and the migration see it (at most 4 GiB: one view). `freshZero`: the caller
   * (an accelerator creating an incoming VM) vouches that nothing has written this memory
   * since allocate(); the block says so once (GuestMemoryBlock.takeFreshZero).
   */
  block(idstr: string, guestAddress = 0, options?: { offset?: number; size?: number; freshZero?: boolean }): GuestMemoryBlock {
    const offset = options?.offset ?? 0;
    const region = this.regionAt(offset, options?.size ?? this.size - offset);
    if (this.file !== undefined) return new FileMemoryBlock(this, idstr, guestAddress, offset, region.bytes, this.file);
    return new HostMemoryBlock(this, idstr, guestAddress, offset, region.bytes, options?.freshZero ?? false);
  }

  /** `size` bytes of the file at `path`, mapped (mapFile). */
  static #fromFile(size: number, path: string, share: boolean): HostMemory {
    return new HostMemory(mapFile(size, path, share), size, { path, shared: share });
  }

  /**
   * [offset, offset + length) by address with a view of it (what KVM_SET_USER_MEMORY_REGION
   * registers), at most 4 GiB. Not a Mapping: it is part of one, never unmapped on its own.
   */
  regionAt(offset: number, length: number): { readonly address: bigint; readonly length: number; readonly bytes: Uint8Array } {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length <= 0 || offset + length > this.size || offset % PAGE !== 0) {
      throw new RangeError(`Cannot view [${offset}, ${offset + length}) of ${this.size} bytes of guest RAM`);
    }
    const address = this.address + BigInt(offset);
    return { address, length, bytes: offset === 0 && length <= this.bytes.byteLength ? this.bytes.subarray(0, length) : viewAt(address, length) };
  }

  /** One byte per page of [offset, offset + length): bit 0 set where the page is resident (has ever been touched). */
  residency(offset = 0, length = this.size - offset): Uint8Array {
    return residencyAt(this.address + BigInt(offset), length);
  }

  /** Back [offset, offset + length) with memory now; a no-op where the kernel cannot. */
  populate(offset: number, length: number): void {
    if (!this.populateWorks || this.allBacked) return;
    const errno = populateAt(this.address, this.size, offset, length);
    if (errno !== 0) {
      // EINVAL: a kernel older than 5.14. Pages then fault in as they are written.
      trace('MADV_POPULATE_WRITE failed with errno %d; guest RAM will fault in page by page', errno);
      this.populateWorks = false;
    }
  }

  /**
   * populate() on libuv's thread pool, while this thread goes on. Safe while the range is
   * being written: MADV_POPULATE_WRITE backs missing pages and leaves present ones alone.
   */
  async populateInBackground(offset: number, length: number): Promise<void> {
    const range = pageRange(this.size, offset, length);
    if (!this.populateWorks || this.allBacked || range === undefined) return;
    await madviseRangeInBackground(this.address + BigInt(range.start), range.length, MADV_POPULATE_WRITE);
  }

  /**
   * Give the memory back to the kernel. The mapping itself stays (it then reads as zero)
   * rather than being unmapped: a view that outlives its VM would otherwise crash the
   * whole process on its next access instead of reading zeros; with MAP_NORESERVE the
   * address range costs nothing.
   */
  release(): void {
    this.allBacked = false;
    madviseRange(this.address, this.size, MADV_DONTNEED);
  }

  /** Unmap it: only once nothing (a vCPU, KVM, a view) can reach it any more. */
  unmap(): void {
    munmap(this.mapping);
  }
}

/** What an accelerator's config asks of guest RAM (HostMemory.allocate's options): -mem-prealloc, a memory backend's file. */
export function hostMemoryOptions(config: AcceleratorConfig): { prealloc: boolean; file?: { path: string; share: boolean } } {
  const backend = config.memoryBackend;
  return { prealloc: config.memPrealloc ?? false, ...(backend?.path !== undefined ? { file: { path: backend.path, share: backend.share } } : {}) };
}

/**
 * A HostMemory as the guest's RAM block. A class, not an object of closures made per block:
 * the migration's page paths call populate() from compiled code, and that code must stay
 * valid from one block to the next (the warm-up's scratch blocks, then the guest's).
 */
abstract class MappedBlock implements GuestMemoryBlock {
  readonly idstr: string;
  readonly guestAddress: number;
  readonly size: number;
  readonly bytes: Uint8Array;
  readonly hostAddress: number;
  protected readonly host: HostMemory;
  /** Where the block starts in its HostMemory. */
  protected readonly offset: number;

  constructor(host: HostMemory, idstr: string, guestAddress: number, offset: number, bytes: Uint8Array) {
    this.host = host;
    this.idstr = idstr;
    this.guestAddress = guestAddress;
    this.size = bytes.byteLength;
    this.bytes = bytes;
    this.hostAddress = Number(host.address) + offset;
    this.offset = offset;
  }

  populate(offset: number, length: number): void {
    this.host.populate(this.offset + offset, Math.min(length, this.size - offset));
  }

  populateInBackground(offset: number, length: number): Promise<void> {
    return this.host.populateInBackground(this.offset + offset, Math.min(length, this.size - offset));
  }
}

/** A block of anonymous memory: a page the host never backed reads as zero, and so does one given back. */
class HostMemoryBlock extends MappedBlock {
  #freshZero: boolean;

  constructor(host: HostMemory, idstr: string, guestAddress: number, offset: number, bytes: Uint8Array, freshZero: boolean) {
    super(host, idstr, guestAddress, offset, bytes);
    this.#freshZero = freshZero;
  }

  residency(): Uint8Array {
    return this.host.residency(this.offset, this.size);
  }

  discard(offset: number, length: number): void {
    const range = pageRange(this.size, offset, length);
    if (range === undefined) return;
    const errno = madviseRange(BigInt(this.hostAddress) + BigInt(range.start), range.length, MADV_DONTNEED);
    if (errno !== 0) throw new RangeError(`Cannot discard [${range.start}, ${range.start + range.length}) of RAM block "${this.idstr}": madvise failed with errno ${errno}`);
  }

  takeFreshZero(): boolean {
    const was = this.#freshZero;
    this.#freshZero = false;
    return was;
  }
}

/**
 * A block of memory a file backs (memory-backend-file). A page the host does not hold may
 * still hold data (the file's), and dropping one does not make it zero: no residency(),
 * no discard(), nothing known to be zero — a destination writes every page it is sent.
 */
class FileMemoryBlock extends MappedBlock {
  readonly file: MemoryFile;

  constructor(host: HostMemory, idstr: string, guestAddress: number, offset: number, bytes: Uint8Array, file: MemoryFile) {
    super(host, idstr, guestAddress, offset, bytes);
    this.file = file;
  }
}

/**
 * QEMU's file_ram_alloc: `path` names a file (made if missing) or a directory, in which an
 * unnamed file is made for this process alone. A file shorter than `size` is grown to it
 * if empty and refused otherwise, in QEMU's words; a longer one is used from its start.
 * share=on maps it MAP_SHARED: writes reach the file, and every process that maps it sees
 * the same memory; off, MAP_PRIVATE: the file is read as it was, writes stay here.
 */
function mapFile(size: number, path: string, share: boolean): MappedRange {
  let file = path;
  let scratchDir: string | undefined;
  let isDirectory = false;
  try {
    isDirectory = statSync(path).isDirectory();
  } catch {
    // Not there yet: made below.
  }
  if (isDirectory) {
    scratchDir = mkdtempSync(join(path, 'ferry_back_mem.'));
    file = join(scratchDir, 'ram');
  }
  let fd: number;
  try {
    fd = openSync(file, constants.O_RDWR | constants.O_CREAT, 0o600);
  } catch (err) {
    if (scratchDir !== undefined) rmSync(scratchDir, { recursive: true, force: true });
    const code = (err as NodeJS.ErrnoException).code ?? '';
    throw new ConfigError(`can't open backing store ${path} for guest RAM: ${code === 'ENOENT' ? 'No such file or directory' : code === 'EACCES' ? 'Permission denied' : (err as Error).message}`);
  }
  try {
    const current = fstatSync(fd).size;
    if (current > 0 && current < size) {
      throw new ConfigError(`backing store size 0x${current.toString(16)} does not match 'size' option 0x${size.toString(16)}`);
    }
    if (current === 0) ftruncateSync(fd, size);
    return mmapUnseen(size, PROT_READ | PROT_WRITE, share ? MAP_SHARED : MAP_PRIVATE, fd, 0);
  } finally {
    closeSync(fd);
    // A file made in a directory is this process's alone: it lives on only in the mapping.
    if (scratchDir !== undefined) rmSync(scratchDir, { recursive: true, force: true });
  }
}

/** MADV_POPULATE_WRITE on [offset, offset + length) of the region at `address`; 0 or the errno. */
function populateAt(address: bigint, size: number, offset: number, length: number): number {
  const range = pageRange(size, offset, length);
  return range === undefined ? 0 : madviseRange(address + BigInt(range.start), range.length, MADV_POPULATE_WRITE);
}

/** [offset, offset + length) widened to whole pages at the start and clipped to `size`; undefined when empty. */
function pageRange(size: number, offset: number, length: number): { start: number; length: number } | undefined {
  const start = Math.max(0, offset - (offset % PAGE));
  const end = Math.min(size, offset + length);
  return length <= 0 || end <= start ? undefined : { start, length: end - start };
}

/**
 * Residency of memory Ferry did not map itself (v86's WebAssembly memory): one byte per
 * page of `bytes`, bit 0 set where the host has backed it. A view that does not start on
 * a page boundary reports every page as backed, which assumes nothing.
 */
export function residencyOf(bytes: Uint8Array): Uint8Array {
  const address = addressOf(bytes);
  if (address % BigInt(PAGE) !== 0n || bytes.byteLength % PAGE !== 0) return new Uint8Array(Math.ceil(bytes.byteLength / PAGE)).fill(1);
  return residencyAt(address, bytes.byteLength);
}

/** Back [offset, offset + length) of `bytes` now (MADV_POPULATE_WRITE); false where the kernel cannot. */
export function populateOf(bytes: Uint8Array, offset: number, length: number): boolean {
  const address = addressOf(bytes);
  if (address % BigInt(PAGE) !== 0n) return false;
  return populateAt(address, bytes.byteLength, offset, length) === 0;
}
