// Passing file descriptors over a unix socket (SCM_RIGHTS): sendmsg with an fd attached,
// and a reader that takes over a socket's receiving side so that ancillary data is not
// lost — Node's own stream reads use read(2), which silently discards passed fds.

import { constants as osConstants } from 'node:os';
import koffi from 'koffi';
import { SystemCallError } from '../errors.js';

// Linux values (asm-generic/socket.h, linux/socket.h, errno-base.h). The struct layouts
// below are those of LP64 Linux (x86_64 and aarch64 agree).
export const SOL_SOCKET = 1;
export const SCM_RIGHTS = 1;
const MSG_CTRUNC = 0x8;
const MSG_DONTWAIT = 0x40;
const MSG_NOSIGNAL = 0x4000;
const MSG_CMSG_CLOEXEC = 0x40000000;
const EAGAIN = 11;
const EINTR = 4;
/** The kernel's cap on fds in one message (SCM_MAX_FD). */
export const SCM_MAX_FD = 253;

// struct msghdr { void *name; u32 namelen; [4 pad]; struct iovec *iov; size_t iovlen;
//                 void *control; size_t controllen; int flags; [4 pad] }  — 56 bytes
const MSGHDR_SIZE = 56;
const MSG_IOV = 16;
const MSG_IOVLEN = 24;
const MSG_CONTROL = 32;
const MSG_CONTROLLEN = 40;
const MSG_FLAGS = 48;
// struct iovec { void *base; size_t len } — 16 bytes
const IOVEC_SIZE = 16;
// struct cmsghdr { size_t len; int level; int type; data (aligned to 8) }
const CMSG_HEADER = 16;
const cmsgAlign = (n: number): number => (n + 7) & ~7;

// One scratch area per thread: every call below is synchronous, so it is never shared
// between two calls in flight. Layout: msghdr | iovec | control | data.
const IOV_AT = MSGHDR_SIZE;
const CONTROL_AT = IOV_AT + IOVEC_SIZE;
const CONTROL_SIZE = CMSG_HEADER + cmsgAlign(SCM_MAX_FD * 4);
const DATA_AT = cmsgAlign(CONTROL_AT + CONTROL_SIZE);
/** Bytes taken from the socket per recvmsg. */
export const READ_CHUNK = 64 * 1024;
const SCRATCH_SIZE = DATA_AT + READ_CHUNK;

interface Bindings {
  sendmsg(fd: number, msg: unknown, flags: number): number | bigint;
  recvmsg(fd: number, msg: unknown, flags: number): number | bigint;
  dup(fd: number): number;
  close(fd: number): number;
  scratch: unknown;
  base: bigint;
  view: DataView;
  bytes: Uint8Array;
}

let bindings: Bindings | undefined;
let loadError: Error | undefined;

function libc(): Bindings {
  if (bindings) return bindings;
  if (loadError) throw loadError;
  try {
    const lib = koffi.load('libc.so.6');
    const scratch = koffi.alloc('uint8_t', SCRATCH_SIZE);
    // SAFETY: the scratch area is allocated once per thread and never freed, so the raw
    // addresses written into msghdr/iovec stay valid for every later call.
    const buffer = koffi.view(scratch, SCRATCH_SIZE);
    bindings = {
      sendmsg: lib.func('long sendmsg(int fd, void *msg, int flags)') as Bindings['sendmsg'],
      recvmsg: lib.func('long recvmsg(int fd, void *msg, int flags)') as Bindings['recvmsg'],
      dup: lib.func('int dup(int fd)') as Bindings['dup'],
      close: lib.func('int close(int fd)') as Bindings['close'],
      scratch,
      base: koffi.address(scratch),
      view: new DataView(buffer),
      bytes: new Uint8Array(buffer),
    };
    return bindings;
  } catch (err) {
    loadError = new SystemCallError('dlopen', 0, `Cannot load libc for SCM_RIGHTS: ${String(err)}`, { cause: err });
    throw loadError;
  }
}

/** Whether fds can be passed here (Linux with koffi and libc loadable). */
export function scmRightsSupported(): boolean {
  if (process.platform !== 'linux' || (process.arch !== 'x64' && process.arch !== 'arm64')) return false;
  try {
    libc();
    return true;
  } catch {
    return false;
  }
}

function errnoName(errno: number): string {
  for (const [name, value] of Object.entries(osConstants.errno)) if (value === errno) return name;
  return `errno ${errno}`;
}

function syscallError(syscall: string, fd: number, errno: number): SystemCallError {
  return new SystemCallError(syscall, errno, `${syscall} on fd ${fd} failed: ${errnoName(errno)}`);
}

/** Point the scratch msghdr at `dataLength` bytes of data and `controlLength` bytes of control. */
function prepareMsghdr(b: Bindings, dataLength: number, controlLength: number): void {
  const v = b.view;
  for (let i = 0; i < MSGHDR_SIZE; i += 8) v.setBigUint64(i, 0n, true);
  v.setBigUint64(MSG_IOV, b.base + BigInt(IOV_AT), true);
  v.setBigUint64(MSG_IOVLEN, 1n, true);
  v.setBigUint64(MSG_CONTROL, controlLength > 0 ? b.base + BigInt(CONTROL_AT) : 0n, true);
  v.setBigUint64(MSG_CONTROLLEN, BigInt(controlLength), true);
  v.setBigUint64(IOV_AT, b.base + BigInt(DATA_AT), true);
  v.setBigUint64(IOV_AT + 8, BigInt(dataLength), true);
}

/**
 * Send `data` with `fds` attached on a connected unix socket, without blocking.
 * Returns the bytes sent (possibly fewer than data.length; the fds went with the first
 * byte). Returns -1 if the socket buffer is full (EAGAIN); throws SystemCallError otherwise.
 */
export function sendWithFds(socketFd: number, data: Uint8Array, fds: readonly number[]): number {
  if (data.length === 0) throw new RangeError('sendWithFds needs at least one byte of data to carry the fds');
  if (fds.length === 0 || fds.length > SCM_MAX_FD) throw new RangeError(`sendWithFds takes 1 to ${SCM_MAX_FD} fds, not ${fds.length}`);
  const b = libc();
  const length = Math.min(data.length, READ_CHUNK);
  b.bytes.set(data.subarray(0, length), DATA_AT);
  const cmsgLength = CMSG_HEADER + fds.length * 4;
  prepareMsghdr(b, length, cmsgAlign(cmsgLength));
  b.view.setBigUint64(CONTROL_AT, BigInt(cmsgLength), true);
  b.view.setInt32(CONTROL_AT + 8, SOL_SOCKET, true);
  b.view.setInt32(CONTROL_AT + 12, SCM_RIGHTS, true);
  fds.forEach((fd, i) => b.view.setInt32(CONTROL_AT + CMSG_HEADER + i * 4, fd, true));
  for (;;) {
    // SAFETY: msghdr, iovec, control and data all live in the scratch area (see libc()).
    const sent = Number(b.sendmsg(socketFd, b.scratch, MSG_DONTWAIT | MSG_NOSIGNAL));
    if (sent >= 0) return sent;
    const errno = koffi.errno();
    if (errno === EINTR) continue;
    if (errno === EAGAIN) return -1;
    throw syscallError('sendmsg', socketFd, errno);
  }
}

export interface ScmRightsHandlers {
  /** Bytes received, with any fds that came with them (the receiver owns the fds). */
  data(chunk: Uint8Array, fds: number[]): void;
  /** The peer closed its side; no more data will come. */
  end(): void;
  /** recvmsg failed (e.g. ECONNRESET); the reader has stopped. */
  error(err: SystemCallError): void;
}

/** koffi's uv_poll handle (koffi.node.poll), level-triggered like libuv's epoll use. */
interface PollHandle {
  start(options: typeof POLL_EVENTS, callback: () => void): void;
  stop(): void;
  close(): void;
}

const POLL_EVENTS = { readable: true, disconnect: true } as const;

/** recvmsg calls per readiness callback, so one busy client cannot starve the event loop. */
const READS_PER_WAKEUP = 16;

/**
 * Reads a connected unix socket with recvmsg, on the event loop's readiness notifications.
 * It works on a dup of `socketFd`, so libuv may keep writing through the original (its
 * epoll registration and ours are for different fd numbers). The socket must not be read
 * by anyone else: create the net.Socket with `pauseOnConnect`.
 */
export class ScmRightsReader {
  readonly #fd: number;
  readonly #handlers: ScmRightsHandlers;
  readonly #poll: PollHandle;
  #closed = false;
  #paused = false;

  constructor(socketFd: number, handlers: ScmRightsHandlers) {
    const b = libc();
    const fd = b.dup(socketFd);
    if (fd < 0) throw syscallError('dup', socketFd, koffi.errno());
    this.#fd = fd;
    this.#handlers = handlers;
    this.#poll = koffi.node.poll(fd, POLL_EVENTS, () => this.#drain()) as PollHandle;
  }

  /** Stop reading for now (the consumer is behind); the kernel buffers, then the peer blocks. */
  pause(): void {
    if (this.#closed || this.#paused) return;
    this.#paused = true;
    this.#poll.stop();
  }

  resume(): void {
    if (this.#closed || !this.#paused) return;
    this.#paused = false;
    this.#poll.start(POLL_EVENTS, () => this.#drain());
  }

  /** Stop reading and release the duplicated fd (the original socket is the caller's). */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    // The poll handle goes first: it removes the fd from epoll before the fd is closed.
    this.#poll.close();
    libc().close(this.#fd);
  }

  #drain(): void {
    const b = libc();
    for (let i = 0; i < READS_PER_WAKEUP && !this.#closed && !this.#paused; i++) {
      prepareMsghdr(b, READ_CHUNK, CONTROL_SIZE);
      // SAFETY: as in sendWithFds; the kernel writes at most READ_CHUNK data bytes and
      // CONTROL_SIZE control bytes into the scratch area, as msghdr says.
      const received = Number(b.recvmsg(this.#fd, b.scratch, MSG_DONTWAIT | MSG_CMSG_CLOEXEC));
      if (received < 0) {
        const errno = koffi.errno();
        if (errno === EAGAIN || errno === EINTR) return;
        this.close();
        this.#handlers.error(syscallError('recvmsg', this.#fd, errno));
        return;
      }
      const fds = this.#takeFds(b);
      if (received === 0 && fds.length === 0) {
        this.close();
        this.#handlers.end();
        return;
      }
      this.#handlers.data(b.bytes.slice(DATA_AT, DATA_AT + received), fds);
    }
  }

  #takeFds(b: Bindings): number[] {
    const v = b.view;
    const controlLength = Number(v.getBigUint64(MSG_CONTROLLEN, true));
    const fds: number[] = [];
    let offset = 0;
    while (offset + CMSG_HEADER <= controlLength) {
      const at = CONTROL_AT + offset;
      const length = Number(v.getBigUint64(at, true));
      if (length < CMSG_HEADER || offset + length > controlLength) break;
      if (v.getInt32(at + 8, true) === SOL_SOCKET && v.getInt32(at + 12, true) === SCM_RIGHTS) {
        for (let p = CMSG_HEADER; p + 4 <= length; p += 4) fds.push(v.getInt32(at + p, true));
      }
      offset += cmsgAlign(length);
    }
    if ((v.getInt32(MSG_FLAGS, true) & MSG_CTRUNC) !== 0) {
      // The kernel closed the fds that did not fit; the ones that did are still ours.
      process.emitWarning(`recvmsg on fd ${this.#fd}: ancillary data truncated, some passed fds were dropped`);
    }
    return fds;
  }
}
