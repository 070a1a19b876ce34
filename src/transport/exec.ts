// exec:COMMAND — runs the command with `sh -c`, as QEMU does; the source's stream goes to
// its stdin and the destination's comes from its stdout. The command's exit status is part
// of the channel: a non-zero exit fails end() and read(), with the tail of its stderr.

import { spawn, type ChildProcess } from 'node:child_process';
import type net from 'node:net';
import { TransportError } from '../errors.js';
import { setPipeSize } from '../sys/libc.js';
import type { Channel, VectoredWriter } from './channel.js';
import { adoptWithPooledReads } from './read-pool.js';
import { socketFd } from './socket.js';
import { DEFAULT_READ_HIGH_WATER_MARK, DEFAULT_WRITE_HIGH_WATER_MARK, StreamChannel } from './stream-channel.js';

/** How much of the command's stderr is kept for error messages. */
export const STDERR_TAIL_BYTES = 2048;
/** After a pipe breaks, how long to wait for the command's exit status before reporting without it. */
const EXIT_WAIT_MS = 2000;
/** What the pipes to and from the command are asked to hold (Linux allows 1 MiB unprivileged). */
const PIPE_BYTES = 1024 * 1024;

export interface ExecOptions {
  readonly writeHighWaterMark?: number;
  readonly readHighWaterMark?: number;
  /** The shell that runs the command with -c (default /bin/sh, as QEMU uses). */
  readonly shell?: string;
}

type ExitStatus = { readonly code: number | null; readonly signal: NodeJS.Signals | null };

/** Start `sh -c command`; resolves once the process runs, rejects if it cannot be started. */
export function execChannel(command: string, options: ExecOptions = {}): Promise<Channel> {
  const description = `exec:${command}`;
  return new Promise<Channel>((resolve, reject) => {
    let child: ChildProcess;
    try {
      child = spawn(options.shell ?? '/bin/sh', ['-c', command], { stdio: ['pipe', 'pipe', 'pipe'] });
    } catch (err) {
      reject(new TransportError(`Cannot start ${description}: ${errorText(err)}`, { cause: err }));
      return;
    }
    const onSpawnError = (err: Error): void => {
      reject(new TransportError(`Cannot start ${description}: ${err.message}`, { cause: err }));
    };
    child.once('error', onSpawnError);
    child.once('spawn', () => {
      child.off('error', onSpawnError);
      resolve(new ExecChannel(child, description, options));
    });
  });
}

class ExecChannel implements Channel {
  readonly description: string;
  readonly #child: ChildProcess;
  readonly #inner: StreamChannel;
  readonly #exit: Promise<ExitStatus>;
  #exitStatus: ExitStatus | null = null;
  #stderrTail = '';
  #endPromise: Promise<void> | null = null;
  #destroyed = false;
  readonly vectored?: VectoredWriter;

  constructor(child: ChildProcess, description: string, options: ExecOptions) {
    this.#child = child;
    this.description = description;
    const stdin = child.stdin!;
    const stderr = child.stderr!;
    // Adopted in the same tick as spawn(), before the pipe can have delivered anything.
    const { socket: stdout, pooledReads } = adoptWithPooledReads(child.stdout as net.Socket, { writable: false });
    setWritableHighWaterMark(stdin, options.writeHighWaterMark ?? DEFAULT_WRITE_HIGH_WATER_MARK);
    // A pipe holds 64 KiB: each time it fills, the sender waits for the command to read.
    // Ask for PIPE_BYTES (a failure leaves the default, which works, only slower).
    const stdinFd = socketFd(stdin as net.Socket);
    if (stdinFd !== undefined) setPipeSize(stdinFd, PIPE_BYTES);
    const stdoutFd = socketFd(stdout);
    if (stdoutFd !== undefined) setPipeSize(stdoutFd, PIPE_BYTES);
    this.#inner = new StreamChannel({
      description,
      readable: stdout,
      writable: stdin,
      readHighWaterMark: options.readHighWaterMark ?? DEFAULT_READ_HIGH_WATER_MARK,
      ...(pooledReads ? { pooledReads } : {}),
      ...(stdinFd !== undefined ? { directFd: () => socketFd(stdin as net.Socket) } : {}),
    });
    const inner = this.#inner.vectored;
    if (inner) {
      this.vectored = {
        maxRefs: inner.maxRefs,
        write: (batch, done) => {
          let written: Promise<void> | undefined;
          try {
            written = inner.write(batch, done);
          } catch (err) {
            return this.#explain(err).then((explained) => Promise.reject(explained));
          }
          return written?.catch(async (err: unknown) => {
            throw await this.#explain(err);
          });
        },
      };
    }
    stderr.setEncoding('utf8');
    stderr.on('data', (text: string) => {
      this.#stderrTail = (this.#stderrTail + text).slice(-STDERR_TAIL_BYTES);
    });
    stderr.on('error', () => {});
    this.#exit = new Promise<ExitStatus>((resolve) => {
      child.on('exit', (code, signal) => {
        this.#exitStatus = { code, signal };
        resolve(this.#exitStatus);
      });
    });
    // A late 'error' (e.g. kill() failing) must not become an unhandled event.
    child.on('error', () => {});
  }

  async read(): Promise<Uint8Array | null> {
    let chunk: Uint8Array | null;
    try {
      chunk = await this.#inner.read();
    } catch (err) {
      throw await this.#explain(err);
    }
    if (chunk === null) {
      // The stream is complete only if the command that produced it succeeded.
      const failure = this.#statusError(await this.#exit);
      if (failure) throw failure;
    }
    return chunk;
  }

  release(chunk: Uint8Array): void {
    this.#inner.release(chunk);
  }

  async write(data: Uint8Array, done?: () => void): Promise<void> {
    try {
      await this.#inner.write(data, done);
    } catch (err) {
      throw await this.#explain(err);
    }
  }

  async drain(): Promise<void> {
    try {
      await this.#inner.drain();
    } catch (err) {
      throw await this.#explain(err);
    }
  }

  end(): Promise<void> {
    if (this.#endPromise) return this.#endPromise;
    this.#endPromise = (async () => {
      try {
        await this.#inner.end();
      } catch (err) {
        throw await this.#explain(err);
      }
      const failure = this.#statusError(await this.#exit);
      if (failure) throw failure;
    })();
    this.#endPromise.catch(() => {});
    return this.#endPromise;
  }

  destroy(error?: Error): void {
    if (this.#destroyed) return;
    this.#destroyed = true;
    this.#inner.destroy(error);
    this.#child.stderr?.destroy();
    if (this.#exitStatus === null) this.#child.kill('SIGTERM');
  }

  /** A broken pipe says little; the command's exit status and stderr say why. */
  async #explain(err: unknown): Promise<Error> {
    if (this.#destroyed) return err instanceof Error ? err : new TransportError(String(err));
    let timer: NodeJS.Timeout | undefined;
    const status = await Promise.race([
      this.#exit,
      new Promise<null>((resolve) => {
        timer = setTimeout(() => resolve(null), EXIT_WAIT_MS);
      }),
    ]);
    clearTimeout(timer);
    const failure = status ? this.#statusError(status, err) : null;
    return failure ?? (err instanceof Error ? err : new TransportError(String(err)));
  }

  #statusError(status: ExitStatus, cause?: unknown): TransportError | null {
    if (status.code === 0) return null;
    const how = status.signal !== null ? `was killed by ${status.signal}` : `exited with status ${status.code}`;
    const tail = this.#stderrTail.trim();
    const message = `Command ${JSON.stringify(this.description.slice('exec:'.length))} ${how}${tail ? `: ${tail}` : ''}`;
    return new TransportError(message, cause === undefined ? undefined : { cause });
  }
}

/**
 * Node gives a child's pipes the default 16 KiB mark and no option to change it; the
 * state field is what Writable.write compares against, so raising it is the only way
 * to let a large write resolve at once.
 */
function setWritableHighWaterMark(stream: NodeJS.WritableStream, bytes: number): void {
  const state = (stream as unknown as { _writableState?: { highWaterMark: number } })._writableState;
  if (state && typeof state.highWaterMark === 'number') state.highWaterMark = bytes;
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
