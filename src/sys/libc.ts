// The few libc calls Node lacks (open/close on device files, ioctl, mmap/munmap,
// madvise, gettid, tgkill), one typed koffi binding each, with errno turned into
// SystemCallError. The library is loaded once per thread (a worker loads its own).

import koffi from 'koffi';
import { SystemCallError } from '../errors.js';
import { MAX_VIEW_BYTES } from './view.js';

// Linux x86_64 values (asm-generic/fcntl.h, mman-common.h, errno-base.h, signal.h).
export const O_RDONLY = 0o0;
export const O_RDWR = 0o2;
export const O_CLOEXEC = 0o2000000;
export const PROT_NONE = 0x0;
export const PROT_READ = 0x1;
export const PROT_WRITE = 0x2;
export const MAP_SHARED = 0x01;
export const MAP_PRIVATE = 0x02;
export const MAP_ANONYMOUS = 0x20;
export const MAP_NORESERVE = 0x4000;
export const MAP_POPULATE = 0x8000;
export const MADV_DONTNEED = 4;
export const MADV_HUGEPAGE = 14;
export const MADV_NOHUGEPAGE = 15;
/** Linux ≥ 5.14: fault pages in (writable) from inside the kernel, far cheaper than touching them. */
export const MADV_POPULATE_WRITE = 23;
export const SIGUSR2 = 12;
export const EPERM = 1;
export const ENOENT = 2;
export const EINTR = 4;
export const EAGAIN = 11;
export const EACCES = 13;
export const EFAULT = 14;
export const EBUSY = 16;
export const EEXIST = 17;
export const ENODEV = 19;
export const EINVAL = 22;
export const ENOTTY = 25;
export const E2BIG = 7;
export const ENOMEM = 12;
export const ENXIO = 6;

export { MAX_VIEW_BYTES, viewAt } from './view.js';

/** MAP_FAILED is (void *)-1. */
const MAP_FAILED = 0xffffffffffffffffn;

interface Bindings {
  open(path: string, flags: number, mode: number): number;
  close(fd: number): number;
  ioctlPtr(fd: number, request: number, arg: Uint8Array | null): number;
  ioctlInt(fd: number, request: number, arg: number | bigint): number;
  mmap(addr: null, length: number, prot: number, flags: number, fd: number, offset: number | bigint): unknown;
  munmap(addr: unknown, length: number): number;
  madvise(addr: unknown, length: number, advice: number): number;
  madviseAt: ((addr: bigint, length: number, advice: number) => number) & {
    /** koffi runs the call on libuv's thread pool and reports back on this thread. */
    async(addr: bigint, length: number, advice: number, done: (err: unknown, result: number) => void): void;
  };
  mincore(addr: bigint, length: number, vec: Uint8Array): number;
  socket(domain: number, type: number, protocol: number): number;
  setsockopt(fd: number, level: number, name: number, value: Uint8Array, len: number): number;
  getsockopt(fd: number, level: number, name: number, value: Uint8Array, len: number[]): number;
  writev(fd: number, iov: Uint8Array, iovcnt: number): number;
  readv(fd: number, iov: Uint8Array, iovcnt: number): number;
  pipe2(fds: Uint8Array, flags: number): number;
  vmsplice(fd: number, iov: Uint8Array, count: number, flags: number): number | bigint;
  splice(fdIn: number, offIn: null, fdOut: number, offOut: null, length: number, flags: number): number | bigint;
  fcntlInt(fd: number, cmd: number, arg: number): number;
  poll: ((fds: Uint8Array, nfds: number, timeoutMs: number) => number) & {
    async(fds: Uint8Array, nfds: number, timeoutMs: number, done: (err: unknown, result: number) => void): void;
  };
  gettid(): number;
  tgkill(tgid: number, tid: number, sig: number): number;
  strerror(errnum: number): string;
  syscall1(number: number, arg: number): number | bigint;
  _exit(status: number): void;
}

let bindings: Bindings | undefined;

function libc(): Bindings {
  if (bindings) return bindings;
  const lib = koffi.load('libc.so.6');
  // ioctl and open are variadic in C. On x86_64 SysV a variadic call passes integer and
  // pointer arguments exactly like a fixed one (only %al, the count of vector registers,
  // differs, and the callee ignores it for non-float arguments), so fixed prototypes with
  // the third argument's real type are correct and avoid koffi's slower variadic path.
  bindings = {
    open: lib.func('int open(const char *path, int flags, uint32_t mode)'),
    close: lib.func('int close(int fd)'),
    // `void *` from a Uint8Array: koffi passes a pointer to the array's own bytes for the
    // duration of the call only, which is what every ioctl here needs (the kernel copies
    // the struct in or out before returning).
    ioctlPtr: lib.func('ioctl', 'int', ['int', 'unsigned long', 'void *']),
    ioctlInt: lib.func('ioctl', 'int', ['int', 'unsigned long', 'unsigned long']),
    mmap: lib.func('void *mmap(void *addr, size_t length, int prot, int flags, int fd, int64_t offset)'),
    munmap: lib.func('int munmap(void *addr, size_t length)'),
    madvise: lib.func('int madvise(void *addr, size_t length, int advice)'),
    // The same calls on a raw address (a bigint): koffi turns it into the pointer value.
    madviseAt: lib.func('int madvise(void *addr, size_t length, int advice)'),
    // `vec` is written by the kernel during the call only (one byte per page).
    mincore: lib.func('int mincore(void *addr, size_t length, _Out_ uint8_t *vec)'),
    // `iov` (struct iovec[iovcnt]) is read during the call only; the addresses in it are
    // the caller's to keep valid for that long. ssize_t is 64-bit on x86_64.
    writev: lib.func('int64_t writev(int fd, void *iov, int iovcnt)'),
    // The same for reading: the kernel writes into the memory the entries point at.
    readv: lib.func('int64_t readv(int fd, void *iov, int iovcnt)'),
    // `fds` receives the two descriptors (int[2]).
    pipe2: lib.func('int pipe2(_Out_ uint8_t *fds, int flags)'),
    // `iov` is read during the call; the memory its entries point at is then referenced by
    // the pipe (not copied) until the pages leave it and whatever they went to lets go.
    vmsplice: lib.func('int64_t vmsplice(int fd, void *iov, unsigned long count, unsigned int flags)'),
    splice: lib.func('int64_t splice(int fdIn, void *offIn, int fdOut, void *offOut, size_t length, unsigned int flags)'),
    // fcntl is variadic; an int third argument passes as in a fixed prototype (see above).
    fcntlInt: lib.func('fcntl', 'int', ['int', 'int', 'int']),
    // Run on the thread pool (async) to wait for a socket without blocking this thread;
    // `fds` is koffi's copy-in/copy-out buffer for that call.
    poll: lib.func('int poll(_Inout_ uint8_t *fds, unsigned long nfds, int timeout)'),
    gettid: lib.func('int gettid(void)'),
    tgkill: lib.func('int tgkill(int tgid, int tid, int sig)'),
    strerror: lib.func('const char *strerror(int errnum)'),
    // syscall(2) with one integer argument, for calls glibc has no wrapper for (userfaultfd);
    // variadic in C, fixed here as ioctl's is (see above).
    syscall1: lib.func('syscall', 'long', ['long', 'long']),
    _exit: lib.func('void _exit(int status)'),
    // `value` is read by the kernel during the call only.
    socket: lib.func('int socket(int domain, int type, int protocol)'),
    setsockopt: lib.func('int setsockopt(int fd, int level, int name, void *value, uint32_t len)'),
    getsockopt: lib.func('int getsockopt(int fd, int level, int name, _Out_ uint8_t *value, _Inout_ uint32_t *len)'),
  } as unknown as Bindings;
  return bindings;
}

/** The errno of the last failed call on this thread, as a SystemCallError naming the call. */
function fail(syscall: string, action: string): SystemCallError {
  const errno = koffi.errno();
  return new SystemCallError(syscall, errno, `${action} failed: ${libc().strerror(errno)} (errno ${errno})`);
}

export function errnoName(errno: number): string {
  return libc().strerror(errno);
}

/** open(2) with O_CLOEXEC added, so fds never leak into spawned processes. */
export function openPath(path: string, flags: number): number {
  const fd = libc().open(path, flags | O_CLOEXEC, 0);
  if (fd < 0) throw fail('open', `open("${path}", 0x${flags.toString(16)})`);
  return fd;
}

export function closeFd(fd: number): void {
  if (libc().close(fd) < 0) throw fail('close', `close(${fd})`);
}

/**
 * ioctl with a pointer argument. `arg` must hold the whole struct the request names
 * (the size encoded in `request`); it is pinned only for the duration of the call.
 */
export function ioctlPtr(fd: number, request: number, arg: Uint8Array | null, what: string): number {
  const r = libc().ioctlPtr(fd, request, arg);
  if (r < 0) throw fail('ioctl', `ioctl(${fd}, ${what})`);
  return r;
}

/** SIOCOUTQ (= TIOCOUTQ): bytes in a socket's send queue. */
const SIOCOUTQ = 0x5411;
const outqBuffer = new Uint8Array(4);

/**
 * Bytes a socket has been given that its peer has not taken yet: for a unix socket, not
 * yet read; for tcp, not yet acknowledged. 0 where the descriptor is not a socket.
 */
export function socketSendQueue(fd: number): number {
  if (libc().ioctlPtr(fd, SIOCOUTQ, outqBuffer) < 0) return 0;
  return new DataView(outqBuffer.buffer).getInt32(0, true);
}

/** ioctl with an integer argument (or none: pass 0). */
export function ioctlInt(fd: number, request: number, arg: number | bigint, what: string): number {
  const r = libc().ioctlInt(fd, request, arg);
  if (r < 0) throw fail('ioctl', `ioctl(${fd}, ${what})`);
  return r;
}

/**
 * ioctl that may fail with an errno the caller handles itself (KVM_RUN → EINTR):
 * returns the result, or -errno.
 */
export function ioctlIntRaw(fd: number, request: number, arg: number | bigint): number {
  const r = libc().ioctlInt(fd, request, arg);
  return r < 0 ? -koffi.errno() : r;
}

/** A live mapping, seen or not: its address (for structs that carry a pointer) and length. */
export interface MappedRange {
  readonly address: bigint;
  readonly length: number;
  /** koffi's pointer object, kept for munmap/madvise. */
  readonly pointer: unknown;
}

/** A live mapping with a view of it, without copies. */
export interface Mapping extends MappedRange {
  readonly bytes: Uint8Array;
}

/**
 * mmap(2). The returned `bytes` is a koffi external view of the mapping: it stays valid
 * until munmap, and must not be used after it (the process would fault).
 */
export function mmap(length: number, prot: number, flags: number, fd = -1, offset = 0): Mapping {
  // koffi.view aborts the whole process (a fatal N-API error, not an exception) above
  // 4 GiB, so refuse such a mapping here with an error that can be handled.
  if (!Number.isSafeInteger(length) || length <= 0 || length > MAX_VIEW_BYTES) {
    throw new RangeError(`Cannot map ${length} bytes: a mapping seen from TypeScript must be 1 byte to ${MAX_VIEW_BYTES} bytes (4 GiB)`);
  }
  const mapped = mmapUnseen(length, prot, flags, fd, offset);
  return { ...mapped, bytes: new Uint8Array(koffi.view(mapped.pointer as object, length)) };
}

/** mmap(2) without a view of the whole (any length): the caller views the part it uses (viewAt). */
export function mmapUnseen(length: number, prot: number, flags: number, fd = -1, offset = 0): MappedRange {
  if (!Number.isSafeInteger(length) || length <= 0) throw new RangeError(`Cannot map ${length} bytes`);
  const pointer = libc().mmap(null, length, prot, flags, fd, offset);
  const address = pointer === null ? 0n : koffi.address(pointer);
  if (pointer === null || address === MAP_FAILED) {
    throw fail('mmap', `mmap(length ${length}, prot 0x${prot.toString(16)}, flags 0x${flags.toString(16)}, fd ${fd})`);
  }
  return { address, length, pointer };
}

/**
 * Anonymous private memory, zero-filled, not backed by swap reservations (guest RAM,
 * bitmaps). `populate` faults every page in now (MAP_POPULATE), so that a migration
 * destination does not pay the first-touch cost while the stream arrives.
 */
export function mmapAnonymous(length: number, options: { populate?: boolean } = {}): Mapping {
  return mmap(length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | (options.populate ? MAP_POPULATE : 0));
}

/** Anonymous memory as mmapAnonymous gives it, with no view made of the whole. */
export function mmapAnonymousUnseen(length: number): MappedRange {
  return mmapUnseen(length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE);
}

export function munmap(mapping: MappedRange): void {
  if (libc().munmap(mapping.pointer, mapping.length) < 0) {
    throw fail('munmap', `munmap(0x${mapping.address.toString(16)}, ${mapping.length})`);
  }
}

export function madvise(mapping: MappedRange, advice: number): void {
  if (libc().madvise(mapping.pointer, mapping.length, advice) < 0) {
    throw fail('madvise', `madvise(0x${mapping.address.toString(16)}, ${mapping.length}, ${advice})`);
  }
}

/**
 * madvise(2) on part of a mapping, by address. Returns the errno instead of throwing, so
 * callers can fall back where the kernel lacks an advice (EINVAL for an unknown one).
 */
export function madviseRange(address: bigint, length: number, advice: number): number {
  return libc().madviseAt(address, length, advice) < 0 ? koffi.errno() : 0;
}

/**
 * madviseRange on libuv's thread pool: this thread goes on while the kernel works (a
 * destination populates guest RAM ahead of the pages arriving this way). Resolves to
 * true when madvise succeeded; a failure is not an error here, since the memory then
 * simply faults in when written.
 */
export function madviseRangeInBackground(address: bigint, length: number, advice: number): Promise<boolean> {
  return new Promise((resolve) => {
    libc().madviseAt.async(address, length, advice, (err, result) => resolve(!err && result === 0));
  });
}

/**
 * mincore(2): for each page of [address, address + length), bit 0 of `vec` is set when
 * the page is resident. `address` must be page-aligned; `vec` holds one byte per page.
 */
export function mincore(address: bigint, length: number, vec: Uint8Array): void {
  if (libc().mincore(address, length, vec) < 0) {
    throw fail('mincore', `mincore(0x${address.toString(16)}, ${length})`);
  }
}

/** The address of a view's first byte (an ArrayBuffer's backing store, e.g. WebAssembly memory). */
export function addressOf(view: Uint8Array): bigint {
  return koffi.address(view);
}

const SOL_SOCKET = 1;
/** socket(7): SO_SNDBUF, SO_RCVBUF, and the privileged variants that ignore the sysctl caps. */
const BUFFER_OPTION = {
  send: { plain: 7, force: 32, name: 'SO_SNDBUF' },
  receive: { plain: 8, force: 33, name: 'SO_RCVBUF' },
} as const;

export type SocketBuffer = keyof typeof BUFFER_OPTION;

/**
 * setsockopt(SO_SNDBUF / SO_RCVBUF): how many bytes the kernel may hold for a socket on
 * that side. The kernel doubles the value for its bookkeeping; the plain option caps it at
 * net.core.wmem_max / rmem_max, the FORCE one (CAP_NET_ADMIN) does not. Either turns off
 * tcp's own sizing of that buffer. Returns 0, or the errno.
 */
export function setSocketBufferSize(fd: number, which: SocketBuffer, bytes: number, force = false): number {
  const value = new Uint8Array(4);
  new DataView(value.buffer).setInt32(0, bytes, true);
  const option = force ? BUFFER_OPTION[which].force : BUFFER_OPTION[which].plain;
  return libc().setsockopt(fd, SOL_SOCKET, option, value, 4) < 0 ? koffi.errno() : 0;
}

/** getsockopt(SO_SNDBUF / SO_RCVBUF): the buffer the kernel gives the socket now (doubled, as it reports it). */
export function socketBufferSize(fd: number, which: SocketBuffer): number {
  const value = new Uint8Array(4);
  const { plain, name } = BUFFER_OPTION[which];
  if (libc().getsockopt(fd, SOL_SOCKET, plain, value, [4]) < 0) throw fail('getsockopt', `getsockopt(${fd}, ${name})`);
  return new DataView(value.buffer).getInt32(0, true);
}

const AF_INET = 2;
const AF_INET6 = 10;
const SOCK_STREAM = 1;
const SOCK_CLOEXEC = 0o2000000;

/**
 * socket(2): a new, unconnected tcp socket of IPv4 or IPv6 (close-on-exec), for options
 * that must be set before it connects; Node adopts it with `new net.Socket({ fd })`.
 */
export function tcpSocket(family: 4 | 6): number {
  const fd = libc().socket(family === 6 ? AF_INET6 : AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw fail('socket', `socket(AF_INET${family === 6 ? '6' : ''}, SOCK_STREAM)`);
  return fd;
}

const IPPROTO_TCP = 6;
/** tcp(7): TCP_CONGESTION, the socket's congestion-control algorithm by name. */
const TCP_CONGESTION = 13;
/** TCP_CA_NAME_MAX: the longest algorithm name, with its NUL. */
const TCP_CA_NAME_MAX = 16;

/**
 * setsockopt(TCP_CONGESTION): use the congestion-control algorithm `name` on a tcp socket
 * (also once connected). One outside net.ipv4.tcp_allowed_congestion_control needs
 * CAP_NET_ADMIN (EPERM without), one not in the kernel fails with ENOENT. Returns 0, or the errno.
 */
export function setTcpCongestion(fd: number, name: string): number {
  const value = new TextEncoder().encode(name);
  if (value.byteLength >= TCP_CA_NAME_MAX) throw new RangeError(`congestion-control name "${name}" is longer than ${TCP_CA_NAME_MAX - 1} bytes`);
  return libc().setsockopt(fd, IPPROTO_TCP, TCP_CONGESTION, value, value.byteLength) < 0 ? koffi.errno() : 0;
}

/** getsockopt(TCP_CONGESTION): the name of the algorithm a tcp socket uses now. */
export function tcpCongestion(fd: number): string {
  const value = new Uint8Array(TCP_CA_NAME_MAX);
  if (libc().getsockopt(fd, IPPROTO_TCP, TCP_CONGESTION, value, [TCP_CA_NAME_MAX]) < 0) throw fail('getsockopt', `getsockopt(${fd}, TCP_CONGESTION)`);
  const end = value.indexOf(0);
  return new TextDecoder().decode(value.subarray(0, end < 0 ? value.byteLength : end));
}

/** The kernel's limit on iovec entries per writev (UIO_MAXIOV). */
export const IOV_MAX = 1024;

/**
 * writev(2) of `count` entries of `iov` (struct iovec, as transport/iovec.ts builds them; addresses of
 * memory the caller keeps alive for the call). Returns the bytes written, or -errno
 * (-EAGAIN when a non-blocking socket is full).
 */
export function writev(fd: number, iov: Uint8Array, count: number): number {
  const n = Number(libc().writev(fd, iov, count));
  return n < 0 ? -koffi.errno() : n;
}

/**
 * readv(2) into `count` entries of `iov` (struct iovec, as transport/iovec.ts builds them; addresses of
 * memory the caller keeps alive and writable for the call). Returns the bytes read (0 at
 * the end of the stream), or -errno (-EAGAIN when a non-blocking socket has nothing yet).
 */
export function readv(fd: number, iov: Uint8Array, count: number): number {
  const n = Number(libc().readv(fd, iov, count));
  return n < 0 ? -koffi.errno() : n;
}

const POLLIN = 0x001;
const POLLOUT = 0x004;
const POLLERR = 0x008;
const POLLHUP = 0x010;

/** poll(2) for one descriptor on libuv's thread pool: true once `events` (or an error, a hang-up) show, false on the timeout. */
function waitFor(fd: number, events: number, timeoutMs: number): Promise<boolean> {
  const fds = new Uint8Array(8);
  const view = new DataView(fds.buffer);
  view.setInt32(0, fd, true);
  view.setInt16(4, events, true);
  return new Promise((resolve) => {
    libc().poll.async(fds, 1, timeoutMs, (err, result) => {
      if (err || result < 0) return resolve(true); // let the read or write itself say what is wrong
      resolve(result > 0 && (view.getInt16(6, true) & (events | POLLERR | POLLHUP)) !== 0);
    });
  });
}

/**
 * Wait on libuv's thread pool until `fd` can take more bytes, an error or hang-up shows,
 * or `timeoutMs` passes. Resolves with true when writing may go on (writable, or an error
 * the next write will report), false on the timeout. Never rejects.
 */
export function waitWritable(fd: number, timeoutMs: number): Promise<boolean> {
  return waitFor(fd, POLLOUT, timeoutMs);
}

/** The same for reading: true once `fd` has bytes, its end, or an error the next read will report. */
export function waitReadable(fd: number, timeoutMs: number): Promise<boolean> {
  return waitFor(fd, POLLIN, timeoutMs);
}

export const O_NONBLOCK = 0o4000;
/** splice(2) flags: do not block on the pipe (the other end's blocking is its own O_NONBLOCK). */
export const SPLICE_F_NONBLOCK = 0x02;

/** pipe2(2): [read end, write end], or -errno. */
export function pipe2(flags: number): [number, number] | number {
  const fds = new Uint8Array(8);
  if (libc().pipe2(fds, flags) < 0) return -koffi.errno();
  const view = new DataView(fds.buffer);
  return [view.getInt32(0, true), view.getInt32(4, true)];
}

/**
 * vmsplice(2) of `count` entries of `iov` into the pipe `fd`: the pipe then holds references
 * to that memory, not copies of it. Returns the bytes taken (fewer when the pipe filled up),
 * or -errno (-EAGAIN when a non-blocking pipe is full).
 */
export function vmsplice(fd: number, iov: Uint8Array, count: number, flags: number): number {
  const n = Number(libc().vmsplice(fd, iov, count, flags));
  return n < 0 ? -koffi.errno() : n;
}

/** splice(2) of up to `length` bytes from `fdIn` to `fdOut` (one of them a pipe): bytes moved, or -errno. */
export function splice(fdIn: number, fdOut: number, length: number, flags: number): number {
  const n = Number(libc().splice(fdIn, null, fdOut, null, length, flags));
  return n < 0 ? -koffi.errno() : n;
}

const F_SETPIPE_SZ = 1031;

/**
 * fcntl(F_SETPIPE_SZ): let a pipe hold `bytes` (the kernel rounds up to a power-of-two
 * number of pages; an unprivileged process is capped at /proc/sys/fs/pipe-max-size).
 * Returns the new capacity, or -errno.
 */
export function setPipeSize(fd: number, bytes: number): number {
  const r = libc().fcntlInt(fd, F_SETPIPE_SZ, bytes);
  return r < 0 ? -koffi.errno() : r;
}

/** The kernel thread id of the calling thread (a worker's differs from the main thread's). */
export function gettid(): number {
  return libc().gettid();
}

/** Send `signal` to one thread of this process (tgkill(2)). */
export function tgkill(tgid: number, tid: number, signal: number): void {
  if (libc().tgkill(tgid, tid, signal) < 0) throw fail('tgkill', `tgkill(${tgid}, ${tid}, ${signal})`);
}

/** syscall(2) with one integer argument: the result, or -errno. */
export function syscall1(number: number, arg: number): number {
  const r = Number(libc().syscall1(number, arg));
  return r < 0 ? -koffi.errno() : r;
}

/** ioctl with a pointer argument that may fail with an errno the caller handles: the result, or -errno. */
export function ioctlPtrRaw(fd: number, request: number, arg: Uint8Array): number {
  const r = libc().ioctlPtr(fd, request, arg);
  return r < 0 ? -koffi.errno() : r;
}

/**
 * _exit(2): end the process now, every thread with it (exit_group), without Node's exit
 * path — which waits for worker threads to stop, and waits for ever on one asleep in the
 * kernel on a page fault only this process could have served (a post-copy destination
 * whose source is gone).
 */
export function exitImmediately(code: number): never {
  libc()._exit(code);
  throw new Error('_exit returned');
}
