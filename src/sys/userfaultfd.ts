// userfaultfd(2): a post-copy destination runs its guest before all of its RAM has
// arrived. Guest RAM is registered for missing-page faults; a thread that touches a page
// not placed yet (a vCPU, the sim's workload) sleeps in the kernel, and this descriptor
// reports the address. The page is asked of the source, and placed when it arrives with
// UFFDIO_COPY — atomically: the page appears whole, and the sleeping thread wakes.
// The numbers are linux/userfaultfd.h's (x86_64).

import { readSync } from 'node:fs';
import { SystemCallError } from '../errors.js';
import {
  EAGAIN, EEXIST, O_CLOEXEC, O_NONBLOCK, O_RDWR, closeFd, errnoName, ioctlIntRaw, ioctlPtrRaw,
  openPath, syscall1, waitReadable,
} from './libc.js';

const SYS_USERFAULTFD = 323;
/** /dev/userfaultfd's one ioctl: a new userfaultfd, for who may not make the syscall. */
const USERFAULTFD_IOC_NEW = 0xaa00;
const UFFD_API = 0xaan;
/** _IOWR(0xAA, 0x3F, struct uffdio_api {u64 api, features, ioctls}). */
const UFFDIO_API = 0xc018aa3f;
/** _IOWR(0xAA, 0x00, struct uffdio_register {u64 start, len, mode, ioctls}). */
const UFFDIO_REGISTER = 0xc020aa00;
/** _IOR(0xAA, 0x01, struct uffdio_range {u64 start, len}). */
const UFFDIO_UNREGISTER = 0x8010aa01;
/** _IOR(0xAA, 0x02, struct uffdio_range). */
const UFFDIO_WAKE = 0x8010aa02;
/** _IOWR(0xAA, 0x03, struct uffdio_copy {u64 dst, src, len, mode; s64 copy}). */
const UFFDIO_COPY = 0xc028aa03;
/** _IOWR(0xAA, 0x04, struct uffdio_zeropage {u64 start, len, mode; s64 zeropage}). */
const UFFDIO_ZEROPAGE = 0xc020aa04;
/** _IOWR(0xAA, 0x06, struct uffdio_writeprotect {struct uffdio_range range; u64 mode}). */
const UFFDIO_WRITEPROTECT = 0xc018aa06;
const UFFDIO_REGISTER_MODE_MISSING = 1n;
const UFFDIO_REGISTER_MODE_WP = 2n;
const UFFDIO_WRITEPROTECT_MODE_WP = 1n;
/** Bits of `ioctls` a registered range must offer: COPY (3) and ZEROPAGE (4); for write-protection WRITEPROTECT (6). */
const RANGE_IOCTLS_NEEDED = (1n << 3n) | (1n << 4n);
const RANGE_IOCTLS_NEEDED_WP = 1n << 6n;
/**
 * struct uffd_msg: 32 bytes; event at 0, the page fault's flags at 8, its address at 16
 * and, with UFFD_FEATURE_THREAD_ID, the faulting thread's id at 24.
 */
const UFFD_MSG_BYTES = 32;
const UFFD_EVENT_PAGEFAULT = 0x12;
/** uffdio_api.features: write-protect faults (Linux 5.7 for anonymous memory). */
const UFFD_FEATURE_PAGEFAULT_FLAG_WP = 1n << 0n;
/** uffdio_api.features: fault messages name the thread that faulted (Linux 4.14). */
const UFFD_FEATURE_THREAD_ID = 1n << 8n;
/** uffdio_api.features: write-protection holds on pages never touched too (Linux 6.4). */
const UFFD_FEATURE_WP_UNPOPULATED = 1n << 13n;
/** uffd_msg's page-fault flags: the fault came from write-protection. */
const UFFD_PAGEFAULT_FLAG_WP = 2;

const PAGE = 4096;

/**
 * A page fault: the page's address (rounded down to its page), when asked for the thread's
 * id (0 otherwise), and whether it was a write to a write-protected page (else a missing page).
 */
export interface Fault {
  readonly address: bigint;
  readonly tid: number;
  readonly writeProtect: boolean;
}

export class Userfaultfd {
  readonly fd: number;
  /** Whether fault messages name the faulting thread (open({ threadIds: true }) on a kernel that can). */
  readonly threadIds: boolean;
  /**
   * open({ writeProtect: true }): whether write-protection also holds on pages never
   * touched (UFFD_FEATURE_WP_UNPOPULATED); without it such a page must be mapped (read)
   * before it is protected, or a write to it is not reported.
   */
  readonly protectsUnpopulated: boolean;
  #closed = false;
  readonly #range = new Uint8Array(16);
  readonly #rangeView = new DataView(this.#range.buffer);
  readonly #copy = new Uint8Array(40);
  readonly #copyView = new DataView(this.#copy.buffer);
  readonly #zero = new Uint8Array(32);
  readonly #zeroView = new DataView(this.#zero.buffer);
  readonly #messages = Buffer.alloc(UFFD_MSG_BYTES * 64);

  private constructor(fd: number, threadIds: boolean, protectsUnpopulated: boolean) {
    this.fd = fd;
    this.threadIds = threadIds;
    this.protectsUnpopulated = protectsUnpopulated;
  }

  /**
   * A non-blocking userfaultfd with the API handshake done. The syscall first; where it
   * is refused (vm.unprivileged_userfaultfd = 0 without CAP_SYS_PTRACE) /dev/userfaultfd.
   * With `threadIds`, faults name the thread that faulted where the kernel can say it
   * (`threadIds` on the result tells). With `writeProtect`, write-protect faults are
   * reported (registerWriteProtect); a kernel that cannot is refused. Throws a
   * SystemCallError saying what the host lacks.
   */
  static open(options: { threadIds?: boolean; writeProtect?: boolean } = {}): Userfaultfd {
    let fd = syscall1(SYS_USERFAULTFD, O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
      const syscallErrno = -fd;
      let dev: number;
      try {
        dev = openPath('/dev/userfaultfd', O_RDWR);
      } catch (err) {
        throw new SystemCallError('userfaultfd', syscallErrno, `userfaultfd(2) failed: ${errnoName(syscallErrno)} (errno ${syscallErrno}), and /dev/userfaultfd cannot be opened either (${err instanceof Error ? err.message : String(err)}): post-copy needs one of them`, { cause: err });
      }
      try {
        fd = ioctlIntRaw(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
      } finally {
        closeFd(dev);
      }
      if (fd < 0) throw new SystemCallError('ioctl', -fd, `ioctl(/dev/userfaultfd, USERFAULTFD_IOC_NEW) failed: ${errnoName(-fd)} (errno ${-fd})`);
    }
    // The handshake goes once per descriptor; a feature the kernel lacks fails it (EINVAL),
    // so thread ids are asked for only when a handshake without features offers them.
    let asked = 0n;
    if (options.threadIds || options.writeProtect) {
      let offered: bigint;
      const probe = Userfaultfd.open();
      try {
        offered = probe.#features;
      } finally {
        probe.close();
      }
      if (options.writeProtect && (offered & UFFD_FEATURE_PAGEFAULT_FLAG_WP) === 0n) {
        closeFd(fd);
        throw new SystemCallError('ioctl', 0, 'userfaultfd: this kernel cannot report writes to write-protected pages (UFFD_FEATURE_PAGEFAULT_FLAG_WP, Linux 5.7)');
      }
      if (options.threadIds) asked |= offered & UFFD_FEATURE_THREAD_ID;
      if (options.writeProtect) asked |= UFFD_FEATURE_PAGEFAULT_FLAG_WP | (offered & UFFD_FEATURE_WP_UNPOPULATED);
    }
    const uffd = new Userfaultfd(fd, (asked & UFFD_FEATURE_THREAD_ID) !== 0n, (asked & UFFD_FEATURE_WP_UNPOPULATED) !== 0n);
    const api = new Uint8Array(24);
    const view = new DataView(api.buffer);
    view.setBigUint64(0, UFFD_API, true);
    view.setBigUint64(8, asked, true);
    const r = ioctlPtrRaw(fd, UFFDIO_API, api);
    if (r < 0) {
      uffd.close();
      throw new SystemCallError('ioctl', -r, `ioctl(userfaultfd, UFFDIO_API) failed: ${errnoName(-r)} (errno ${-r})`);
    }
    uffd.#features = view.getBigUint64(8, true);
    return uffd;
  }

  /** The features the kernel offers (what the handshake answered). */
  #features = 0n;

  /** Report missing-page faults in [address, address + length) (page-aligned). */
  register(address: bigint, length: number): void {
    this.#register(address, length, UFFDIO_REGISTER_MODE_MISSING, RANGE_IOCTLS_NEEDED, 'does not offer UFFDIO_COPY and UFFDIO_ZEROPAGE');
  }

  /** UFFDIO_REGISTER in `mode`; the range must then offer the `needed` ioctls, or the error says it `lacks`. */
  #register(address: bigint, length: number, mode: bigint, needed: bigint, lacks: string): void {
    const reg = new Uint8Array(32);
    const view = new DataView(reg.buffer);
    view.setBigUint64(0, address, true);
    view.setBigUint64(8, BigInt(length), true);
    view.setBigUint64(16, mode, true);
    const r = ioctlPtrRaw(this.fd, UFFDIO_REGISTER, reg);
    if (r < 0) throw this.#error(mode === UFFDIO_REGISTER_MODE_WP ? 'UFFDIO_REGISTER (write-protect)' : 'UFFDIO_REGISTER', -r, address, length);
    const offered = view.getBigUint64(24, true);
    if ((offered & needed) !== needed) {
      throw new SystemCallError('ioctl', 0, `userfaultfd: the range at 0x${address.toString(16)} (${length} bytes) ${lacks} (ioctls 0x${offered.toString(16)})`);
    }
  }

  /** Report writes to [address, address + length) (page-aligned) while it is write-protected (writeProtect()). Needs open({ writeProtect: true }). */
  registerWriteProtect(address: bigint, length: number): void {
    this.#register(address, length, UFFDIO_REGISTER_MODE_WP, RANGE_IOCTLS_NEEDED_WP, 'cannot be write-protected');
  }

  /**
   * Write-protect [address, address + length) (`protect`), or let writes through again —
   * which also wakes the threads waiting to write there.
   */
  writeProtect(address: bigint, length: number, protect: boolean): void {
    this.#wpView.setBigUint64(0, address, true);
    this.#wpView.setBigUint64(8, BigInt(length), true);
    this.#wpView.setBigUint64(16, protect ? UFFDIO_WRITEPROTECT_MODE_WP : 0n, true);
    const r = ioctlPtrRaw(this.fd, UFFDIO_WRITEPROTECT, this.#wp);
    if (r < 0) throw this.#error(protect ? 'UFFDIO_WRITEPROTECT' : 'UFFDIO_WRITEPROTECT (off)', -r, address, length);
  }

  readonly #wp = new Uint8Array(24);
  readonly #wpView = new DataView(this.#wp.buffer);

  unregister(address: bigint, length: number): void {
    this.#setRange(address, length);
    const r = ioctlPtrRaw(this.fd, UFFDIO_UNREGISTER, this.#range);
    if (r < 0) throw this.#error('UFFDIO_UNREGISTER', -r, address, length);
  }

  /** Wake threads waiting on [address, address + length) without placing anything (they fault again). */
  wake(address: bigint, length: number): void {
    this.#setRange(address, length);
    const r = ioctlPtrRaw(this.fd, UFFDIO_WAKE, this.#range);
    if (r < 0) throw this.#error('UFFDIO_WAKE', -r, address, length);
  }

  /**
   * Place `length` bytes from `src` (whole pages) at `dst`, atomically, and wake whoever
   * waits on them. Returns how many of those bytes were not placed because a page was
   * there already (0: all placed).
   */
  copy(dst: bigint, src: bigint, length: number): number {
    return this.#fill('UFFDIO_COPY', dst, src, length);
  }

  /** Place zero pages at [dst, dst + length), and wake whoever waits on them; returns bytes found there already, as copy(). */
  zeropage(dst: bigint, length: number): number {
    return this.#fill('UFFDIO_ZEROPAGE', dst, undefined, length);
  }

  /**
   * UFFDIO_COPY (from `src`) or UFFDIO_ZEROPAGE (`src` undefined) over [dst, dst + length),
   * going on past pages that are there already. struct uffdio_copy is {dst, src, len, mode,
   * copy}, struct uffdio_zeropage {start, len, mode, zeropage}: the count of bytes done
   * comes back in the last field.
   */
  #fill(request: 'UFFDIO_COPY' | 'UFFDIO_ZEROPAGE', dst: bigint, src: bigint | undefined, length: number): number {
    const zero = src === undefined;
    const struct = zero ? this.#zero : this.#copy;
    const view = zero ? this.#zeroView : this.#copyView;
    const lengthAt = zero ? 8 : 16;
    let present = 0;
    while (length > 0) {
      view.setBigUint64(0, dst, true);
      if (src !== undefined) view.setBigUint64(8, src, true);
      view.setBigUint64(lengthAt, BigInt(length), true);
      view.setBigUint64(lengthAt + 8, 0n, true);
      view.setBigInt64(lengthAt + 16, 0n, true);
      const r = ioctlPtrRaw(this.fd, zero ? UFFDIO_ZEROPAGE : UFFDIO_COPY, struct);
      if (r >= 0) break;
      // EAGAIN: part was placed (the count says how much) or the address space changed under
      // the call: the rest goes again. EEXIST: the next page is there already: skip it.
      const done = Number(view.getBigInt64(lengthAt + 16, true));
      const step = -r === EEXIST ? PAGE : -r === EAGAIN ? Math.max(0, done) : -1;
      if (step < 0) throw this.#error(request, -r, dst, length);
      if (-r === EEXIST) present += PAGE;
      dst += BigInt(step);
      if (src !== undefined) src += BigInt(step);
      length -= step;
    }
    return present;
  }

  /** The page faults reported so far (none when there are none); never blocks. */
  readFaults(): Fault[] {
    const faults: Fault[] = [];
    for (;;) {
      let n: number;
      try {
        n = readSync(this.fd, this.#messages, 0, this.#messages.byteLength, null);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'EAGAIN') return faults;
        throw err;
      }
      for (let at = 0; at + UFFD_MSG_BYTES <= n; at += UFFD_MSG_BYTES) {
        if (this.#messages[at] !== UFFD_EVENT_PAGEFAULT) continue;
        faults.push({
          address: this.#messages.readBigUInt64LE(at + 16),
          tid: this.#messages.readUInt32LE(at + 24),
          writeProtect: (Number(this.#messages.readBigUInt64LE(at + 8) & 0xffn) & UFFD_PAGEFAULT_FLAG_WP) !== 0,
        });
      }
      if (n < this.#messages.byteLength) return faults;
    }
  }

  /** Resolves true once a fault is waiting to be read (or the descriptor fails), false after `timeoutMs`. */
  waitForFault(timeoutMs: number): Promise<boolean> {
    return waitReadable(this.fd, timeoutMs);
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    closeFd(this.fd);
  }

  #setRange(address: bigint, length: number): void {
    this.#rangeView.setBigUint64(0, address, true);
    this.#rangeView.setBigUint64(8, BigInt(length), true);
  }

  #error(request: string, errno: number, address: bigint, length: number): SystemCallError {
    return new SystemCallError('ioctl', errno, `ioctl(userfaultfd, ${request}) at 0x${address.toString(16)} for ${length} bytes failed: ${errnoName(errno)} (errno ${errno})`);
  }
}
