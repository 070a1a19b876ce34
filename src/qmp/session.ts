// One client connection to the QMP server: reads and frames its bytes (with SCM_RIGHTS
// on unix sockets), runs its commands one at a time in arrival order, writes replies
// and events, and cleans up whatever way the client leaves.

import type net from 'node:net';
import { debuglog } from 'node:util';
import type { SystemCallError } from '../errors.js';
import { ScmRightsReader, scmRightsSupported } from '../sys/scm-rights.js';
import type { QmpSessionInfo } from './command.js';
import { closeQuietly } from './fd-registry.js';
import { JsonFramer, type Frame } from './framing.js';
import { QMP_LINE_END } from './protocol.js';

const debug = debuglog('ferry');

/** A client that lets this much output pile up unread is dropped rather than let it grow memory. */
export const MAX_UNREAD_OUTPUT_BYTES = 16 * 1024 * 1024;
/** Requests queued unanswered before the session stops reading (and resumes at a quarter). */
export const MAX_QUEUED_REQUESTS = 256;
/** Fds passed but not yet taken by a command; more than this are closed on arrival. */
export const MAX_PENDING_PASSED_FDS = 32;

/** What the dispatcher hands back for one input: the reply line (none for blank input) and what runs after it. */
export interface DispatchResult {
  readonly line: string | undefined;
  /** Run once the line has been handed to the OS. */
  readonly after: readonly (() => void)[];
  /** Run right after the line is queued, before anything else is written or read. */
  readonly written?: () => void;
}

/** The server side a session talks to. */
export interface SessionHost {
  readonly maxMessageBytes: number;
  greetingLine(): string;
  /** Turn one framed input into its reply; never rejects. */
  dispatch(session: QmpSession, frame: Exclude<Frame, { kind: 'oversized' }>): Promise<DispatchResult>;
  sessionClosed(session: QmpSession): void;
}

export class QmpSession implements QmpSessionInfo {
  readonly id: number;
  readonly transport: 'unix' | 'tcp';
  readonly address: string;
  /** qmp_capabilities succeeded: normal commands and events flow. */
  negotiated = false;

  readonly #socket: net.Socket;
  readonly #host: SessionHost;
  readonly #framer: JsonFramer;
  /** Input waiting for its turn; `end` marks the client's end of stream. */
  readonly #queue: (Frame | { readonly kind: 'end' })[] = [];
  readonly #passedFds: number[] = [];
  #reader: ScmRightsReader | undefined;
  #pumping = false;
  #readingPaused = false;
  #closed = false;

  constructor(id: number, socket: net.Socket, transport: 'unix' | 'tcp', address: string, host: SessionHost) {
    this.id = id;
    this.transport = transport;
    this.address = address;
    this.#socket = socket;
    this.#host = host;
    this.#framer = new JsonFramer({ maxMessageBytes: host.maxMessageBytes });
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Greet the client and start reading. The socket must have been accepted paused. */
  start(): void {
    const socket = this.#socket;
    socket.setNoDelay?.(true);
    socket.on('error', (err) => {
      debug('qmp: session %d socket error: %s', this.id, err.message);
      this.close();
    });
    socket.on('close', () => this.close());
    this.write(this.#host.greetingLine());

    const fd = (socket as unknown as { _handle?: { fd?: number } })._handle?.fd;
    if (this.transport === 'unix' && typeof fd === 'number' && fd >= 0 && scmRightsSupported()) {
      this.#reader = new ScmRightsReader(fd, {
        data: (chunk, fds) => this.#onData(chunk, fds),
        end: () => this.#onEnd(),
        error: (err: SystemCallError) => {
          debug('qmp: session %d read failed: %s', this.id, err.message);
          this.close();
        },
      });
    } else {
      // TCP (or no FFI): Node's own reads; fds cannot arrive here anyway.
      socket.on('data', (chunk: Buffer) => this.#onData(chunk, []));
      socket.on('end', () => this.#onEnd());
      socket.resume();
    }
  }

  /** The oldest fd passed on this connection and not yet taken; the caller owns it. */
  takePassedFd(): number | undefined {
    return this.#passedFds.shift();
  }

  /**
   * Write one JSON line; `done` runs once it has been handed to the OS — or at once if the
   * client is gone, because what a command arranged to do after its reply (`quit`) must
   * still happen when nobody is left to read the reply.
   */
  write(line: string, done?: () => void): void {
    if (!this.#closed && this.#socket.writableLength > MAX_UNREAD_OUTPUT_BYTES) {
      debug('qmp: session %d is not reading its output (%d bytes queued); dropping it', this.id, this.#socket.writableLength);
      this.close();
    }
    if (this.#closed) {
      if (done !== undefined) queueMicrotask(done);
      return;
    }
    this.#socket.write(line + QMP_LINE_END, done === undefined ? undefined : () => done());
  }

  /** Drop the connection now; unfinished input is discarded, passed fds are closed. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#reader?.close();
    this.#reader = undefined;
    this.#queue.length = 0;
    for (const fd of this.#passedFds.splice(0)) closeQuietly(fd);
    this.#socket.destroy();
    this.#host.sessionClosed(this);
  }

  #onData(chunk: Uint8Array, fds: number[]): void {
    if (this.#closed) {
      for (const fd of fds) closeQuietly(fd);
      return;
    }
    for (const fd of fds) {
      if (this.#passedFds.length < MAX_PENDING_PASSED_FDS) this.#passedFds.push(fd);
      else {
        debug('qmp: session %d passed more than %d unused fds; closing fd %d', this.id, MAX_PENDING_PASSED_FDS, fd);
        closeQuietly(fd);
      }
    }
    this.#enqueue(this.#framer.push(chunk));
  }

  #onEnd(): void {
    // A scalar at the very end still counts; an unfinished object is dropped. Whatever
    // is already queued gets its replies, then the connection closes.
    this.#enqueue(this.#framer.end());
    this.#enqueue([{ kind: 'end' }]);
  }

  #enqueue(frames: (Frame | { readonly kind: 'end' })[]): void {
    if (frames.length === 0 || this.#closed) return;
    this.#queue.push(...frames);
    if (this.#queue.length > MAX_QUEUED_REQUESTS) this.#setReading(false);
    if (!this.#pumping) void this.#pump();
  }

  async #pump(): Promise<void> {
    this.#pumping = true;
    try {
      while (!this.#closed) {
        const frame = this.#queue.shift();
        if (frame === undefined) break;
        if (this.#readingPaused && this.#queue.length < MAX_QUEUED_REQUESTS / 4) this.#setReading(true);
        if (frame.kind === 'end') {
          this.#socket.end(() => this.close());
          break;
        }
        if (frame.kind === 'oversized') {
          this.#queue.length = 0;
          this.#rejectOversized(frame.size, frame.limit);
          break;
        }
        const result = await this.#host.dispatch(this, frame);
        if (result.line === undefined) continue;
        // The client may have left while the command ran; write() then runs the hooks at once.
        const after = result.after;
        this.write(result.line, after.length === 0 ? undefined : () => runAll(after, this.id));
        result.written?.();
      }
    } catch (err) {
      // dispatch() answers every failure itself; reaching here is a server bug.
      debug('qmp: session %d dispatch failed: %s', this.id, err instanceof Error ? err.stack : String(err));
      this.close();
    } finally {
      this.#pumping = false;
    }
  }

  /** Flow control: a client that pipelines faster than its commands run waits in the kernel. */
  #setReading(on: boolean): void {
    if (this.#readingPaused === !on || this.#closed) return;
    this.#readingPaused = !on;
    if (this.#reader) {
      if (on) this.#reader.resume();
      else this.#reader.pause();
    } else if (on) {
      this.#socket.resume();
    } else {
      this.#socket.pause();
    }
  }

  #rejectOversized(size: number, limit: number): void {
    debug('qmp: session %d sent a message over %d bytes; closing it', this.id, limit);
    this.write(
      JSON.stringify({
        error: {
          class: 'GenericError',
          desc: `JSON parse error, message too large: more than ${limit} bytes without completing a JSON value (${size} so far); closing the connection`,
        },
      }),
    );
    // Reading stops now; the reply is flushed before the socket closes.
    this.#reader?.close();
    this.#reader = undefined;
    this.#socket.pause();
    this.#socket.end(() => this.close());
  }
}

function runAll(fns: readonly (() => void)[], sessionId: number): void {
  for (const fn of fns) {
    try {
      fn();
    } catch (err) {
      debug('qmp: session %d after-reply hook failed: %s', sessionId, err instanceof Error ? err.stack : String(err));
    }
  }
}
