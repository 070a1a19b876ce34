// Both ends of the return path (src/stream/return-path.ts has the bytes). The source asks
// for it with the `return-path` capability; a destination answers whatever asks, as QEMU's
// does. With it, a source completes only once the destination says it loaded the whole
// stream (SHUT 0) and runs its guest again otherwise — the guest is never left with no
// copy running because the last sections failed to load on the other side.

import { MigrationError, StreamFormatError, TransportError } from '../errors.js';
import { StreamReader } from '../stream/reader.js';
import {
  MIG_CMD_OPEN_RETURN_PATH, MIG_CMD_PING, MIG_RP_MSG_PONG, MIG_RP_MSG_RESUME_ACK, MIG_RP_MSG_SHUT, RESUME_ACK_VALUE,
  be32Bytes, encodePageRequest, encodeRecvBitmap, encodeRpMessage, readRpMessage, writeCommand,
} from '../stream/return-path.js';
import type { StreamWriter } from '../stream/writer.js';
import type { ReturnPathCommand } from '../stream/return-path.js';
import type { Channel } from '../transport/channel.js';
import { keepShape } from '../hot-shapes.js';

/** A destination's SHUT other than 0: it did not load the stream. */
export const REFUSED_PREFIX = 'The destination failed to load the stream';
export function refusedByDestination(shut: number): string {
  return `${REFUSED_PREFIX} (it answered SHUT ${shut} on the return path)`;
}

/** How long a failing destination tries to tell the source before it gives up the connection. */
const FAILURE_SHUT_MS = 1000;

export class DestinationReturnPath {
  readonly #channel: Channel;
  readonly #trace: ((message: string) => void) | undefined;
  #open = false;
  #shutSent = false;
  #writeError: Error | undefined;

  constructor(channel: Channel, trace?: (message: string) => void) {
    keepShape(this);
    this.#channel = channel;
    this.#trace = trace;
  }

  /** A command from the stream: OPEN_RETURN_PATH opens it, PING gets a PONG (savevm.c loadvm_process_command). */
  onCommand(command: ReturnPathCommand, offset: number): void {
    if (command.type === 'open-return-path') {
      if (!this.#channel.duplex) {
        // A saved stream restored from exec: or a file: nobody is there to answer.
        this.#trace?.(`migration: the stream asks for a return path, but ${this.#channel.description} has no way back: not answered`);
        return;
      }
      this.#open = true;
      return;
    }
    if (!this.#channel.duplex) return;
    if (!this.#open) throw new StreamFormatError(`CMD_PING (0x${command.value.toString(16)}) at offset ${offset} received with no return path`, offset, 'command');
    this.#send(MIG_RP_MSG_PONG, command.value);
  }

  /**
   * SHUT `value` (0: all loaded), and wait until the OS has it. Rejects if it cannot be
   * sent: the source will not hear that this side has the guest.
   */
  async shut(value: number): Promise<void> {
    if (!this.#open || this.#shutSent) return;
    this.#shutSent = true;
    this.#send(MIG_RP_MSG_SHUT, value);
    await this.#channel.drain?.();
    if (this.#writeError) {
      throw new TransportError(`Cannot tell the source over ${this.#channel.description} that the stream is in: ${this.#writeError.message}`, { cause: this.#writeError });
    }
  }

  /**
   * The load failed: SHUT 1, then end this side and discard what the source still sends
   * until it closes — FAILURE_SHUT_MS at most in all, whatever becomes of it. Closing with
   * unread bytes would reset the connection, and a reset can throw away the SHUT before
   * the source has read it.
   */
  async shutAfterFailure(): Promise<void> {
    if (!this.#open || this.#shutSent) return;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeUp = new Promise<'time'>((resolve) => { timer = setTimeout(() => resolve('time'), FAILURE_SHUT_MS); });
    try {
      if ((await Promise.race([this.shut(1).then(() => 'sent' as const, () => 'failed' as const), timeUp])) !== 'sent') return;
      void this.#channel.end().catch(() => {});
      for (;;) {
        const chunk = await Promise.race([this.#channel.read().catch(() => null), timeUp]);
        if (chunk === null || chunk === 'time') return;
        this.#channel.release?.(chunk);
      }
    } finally {
      clearTimeout(timer);
    }
  }

  /** Whether the source can be asked for pages (post-copy): the return path is open. */
  get open(): boolean {
    return this.#open;
  }

  /**
   * Ask the source for `length` bytes of block `idstr` from `start` (post-copy): REQ_PAGES_ID
   * when the block differs from the last request's, REQ_PAGES otherwise. A write that fails
   * is kept, and the load fails on it (see requestError).
   */
  requestPages(idstr: string, start: number, length: number): void {
    const named = idstr === this.#lastRequested ? undefined : idstr;
    this.#lastRequested = idstr;
    this.#channel.write(encodePageRequest(start, length, named)).catch((err: unknown) => {
      this.#writeError ??= err instanceof Error ? err : new Error(String(err));
    });
  }

  /**
   * Post-copy recovery: a resumed connection has its return path open from the start (no
   * OPEN_RETURN_PATH comes on it).
   */
  openForRecovery(): void {
    this.#open = true;
  }

  /** RECV_BITMAP's answer: which pages of `idstr` have arrived (bit i of byte i / 8). */
  sendRecvBitmap(idstr: string, bitmap: Uint8Array): void {
    this.#channel.write(encodeRecvBitmap(idstr, bitmap)).catch((err: unknown) => {
      this.#writeError ??= err instanceof Error ? err : new Error(String(err));
    });
  }

  /** POSTCOPY_RESUME's answer: RESUME_ACK with QEMU's value. */
  sendResumeAck(): void {
    this.#send(MIG_RP_MSG_RESUME_ACK, RESUME_ACK_VALUE);
  }

  /** Why a message could not be sent, once one could not. */
  get writeError(): Error | undefined {
    return this.#writeError;
  }

  #lastRequested: string | undefined;

  /** Done: end this side of the connection (the source closes its own). */
  close(): void {
    if (this.#open) void this.#channel.end().catch(() => {});
  }

  #send(type: number, value: number): void {
    this.#channel.write(encodeRpMessage(type, be32Bytes(value))).catch((err: unknown) => {
      this.#writeError ??= err instanceof Error ? err : new Error(String(err));
    });
  }
}

/** What a post-copy source hears on the return path besides PONG and SHUT. */
export interface PostcopyListeners {
  /** A page request: `idstr` undefined means the block the last request named. */
  readonly onPageRequest: (idstr: string | undefined, start: number, length: number) => void;
  /** Recovery: the pages of block `idstr` the destination has (bit i of byte i / 8). */
  readonly onRecvBitmap?: (idstr: string, bitmap: Uint8Array) => void;
  readonly onResumeAck?: (value: number) => void;
}

/**
 * The source's end: reads the destination's messages from the moment the stream asked for
 * the return path. `shut` settles with the destination's SHUT value; it rejects if the
 * connection ends or breaks first, with a message this source never asked for (page
 * requests without post-copy), or with what `onPageRequest` throws.
 */
export class SourceReturnPath {
  readonly shut: Promise<number>;
  pongs = 0;

  constructor(channel: Channel, trace?: (message: string) => void, postcopy?: PostcopyListeners) {
    keepShape(this);
    const reader = new StreamReader(channel);
    this.shut = (async () => {
      for (;;) {
        const message = await readRpMessage(reader, postcopy !== undefined);
        if (message === null) {
          throw new MigrationError(`The destination closed the return path (${channel.description}) without saying whether it loaded the stream`);
        }
        if (message.type === 'pong') {
          this.pongs++;
          trace?.(`migration: return path: PONG ${message.value}`);
          continue;
        }
        if (message.type === 'req-pages') {
          postcopy!.onPageRequest(message.idstr, message.start, message.length);
          continue;
        }
        if (message.type === 'recv-bitmap' || message.type === 'resume-ack') {
          // Only a source resuming post-copy asked for these.
          const listener = message.type === 'recv-bitmap' ? postcopy?.onRecvBitmap : postcopy?.onResumeAck;
          if (!listener) throw new MigrationError(`The destination sent ${message.type === 'recv-bitmap' ? 'a received bitmap' : 'RESUME_ACK'} unasked`);
          if (message.type === 'recv-bitmap') postcopy!.onRecvBitmap!(message.idstr, message.bitmap);
          else postcopy!.onResumeAck!(message.value);
          continue;
        }
        return message.value;
      }
    })();
    // Read from the start; looked at only at the end (or never, if the migration fails first).
    this.shut.catch(() => {});
  }
}

/**
 * The source asks for the return path at the start of the stream `w` writes on `channel`
 * (MIG_CMD_OPEN_RETURN_PATH, then a PING so that a dead one shows early, as QEMU's
 * migration thread does) and reads it from then on. A destination that fails part-way
 * says so at once (QEMU's return-path thread marks the migration bad): the connection is
 * torn down with its SHUT as the error, so nothing more is sent into it. `why` names
 * what needs it, for the refusal over a channel nobody can answer on.
 */
export function openReturnPath(
  channel: Channel,
  w: StreamWriter,
  why: string,
  trace?: (message: string) => void,
  postcopy?: PostcopyListeners,
): SourceReturnPath {
  if (!channel.duplex) {
    throw new MigrationError(`Cannot use the ${why} capability over ${channel.description}: the destination has no way to answer on it (use tcp:, unix: or fd: with a socket)`);
  }
  const rp = new SourceReturnPath(channel, trace, postcopy);
  rp.shut.then((value) => {
    if (value !== 0) channel.destroy(new MigrationError(refusedByDestination(value)));
  }, () => {});
  writeCommand(w, MIG_CMD_OPEN_RETURN_PATH);
  writeCommand(w, MIG_CMD_PING, be32Bytes(1));
  return rp;
}
