// A QMP client for Ferry and QEMU alike: connects over unix or tcp, reads the greeting,
// negotiates, runs commands matched to replies by id, collects events, and passes fds
// with getfd over SCM_RIGHTS.

import { EventEmitter } from 'node:events';
import net from 'node:net';
import { debuglog } from 'node:util';
import { QmpError, TransportError, type QmpErrorClass } from '../errors.js';
import { sendWithFds } from '../sys/scm-rights.js';
import { formatQmpAddress, parseQmpAddress } from './address.js';
import { JsonFramer } from './framing.js';
import { isRecord, type QmpEvent, type QmpGreeting } from './protocol.js';

const debug = debuglog('ferry');

export interface QmpClientOptions {
  /** Connecting plus the greeting (and negotiation) must finish within this. Default 10 s. */
  readonly timeoutMs?: number;
  /** Send qmp_capabilities after the greeting. Default true. */
  readonly negotiate?: boolean;
  /** Cap on one incoming message (query-qmp-schema is large). Default 64 MiB. */
  readonly maxMessageBytes?: number;
}

export interface ExecuteOptions {
  /** Reject if no reply came within this many milliseconds (the command may still run). */
  readonly timeoutMs?: number;
}

/** Events kept for waitForEvent until one consumes them; the oldest go first past this. */
const MAX_BUFFERED_EVENTS = 1000;
const FD_SEND_RETRY_MS = 5;

interface Pending {
  readonly command: string;
  resolve(value: unknown): void;
  reject(error: Error): void;
}

interface EventWaiter {
  readonly name: string;
  readonly predicate: ((event: QmpEvent) => boolean) | undefined;
  resolve(event: QmpEvent): void;
  reject(error: Error): void;
}

export interface QmpClientEvents {
  event: [QmpEvent];
  close: [Error | undefined];
}

export class QmpClient extends EventEmitter<QmpClientEvents> {
  readonly address: string;
  readonly #socket: net.Socket;
  readonly #framer: JsonFramer;
  readonly #unix: boolean;
  readonly #pending = new Map<number, Pending>();
  readonly #buffered: QmpEvent[] = [];
  readonly #waiters = new Set<EventWaiter>();
  #greeting: QmpGreeting | undefined;
  #onGreeting: ((greeting: QmpGreeting) => void) | undefined;
  #greetingFailed: ((error: Error) => void) | undefined;
  #nextId = 1;
  #closeError: Error | undefined;
  #closed = false;

  private constructor(socket: net.Socket, address: string, unix: boolean, maxMessageBytes: number) {
    super();
    this.#socket = socket;
    this.address = address;
    this.#unix = unix;
    this.#framer = new JsonFramer({ maxMessageBytes });
    socket.on('data', (chunk: Buffer) => this.#onData(chunk));
    // Before the greeting, connect() prefixes "Cannot connect to QMP at …" itself.
    socket.on('error', (err) =>
      this.#shutdown(new TransportError(this.#greeting ? `QMP connection to ${address} failed: ${err.message}` : err.message, { cause: err })),
    );
    socket.on('close', () =>
      this.#shutdown(new TransportError(this.#greeting ? `QMP connection to ${address} closed` : 'the server closed the connection before greeting')),
    );
  }

  /**
   * Connect to `unix:/path`, a bare socket path, or `tcp:HOST:PORT`; wait for the greeting
   * and (unless told not to) negotiate capabilities.
   */
  static async connect(addressText: string, options: QmpClientOptions = {}): Promise<QmpClient> {
    const address = parseQmpAddress(addressText);
    const label = formatQmpAddress(address);
    const timeoutMs = options.timeoutMs ?? 10_000;
    const socket = address.kind === 'unix' ? net.connect(address.path) : net.connect(address.port, address.host);
    const client = new QmpClient(socket, label, address.kind === 'unix', options.maxMessageBytes ?? 64 * 1024 * 1024);
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        (async () => {
          await client.#greeted();
          if (options.negotiate !== false) await client.execute('qmp_capabilities');
        })(),
        new Promise<never>((_, reject) => {
          timer = setTimeout(
            () => reject(new TransportError(`Cannot connect to QMP at ${label}: no greeting within ${timeoutMs} ms`)),
            timeoutMs,
          );
        }),
      ]);
    } catch (err) {
      client.#shutdown(err as Error);
      socket.destroy();
      if (err instanceof QmpError) throw err;
      throw err instanceof TransportError
        ? new TransportError(err.message.startsWith('Cannot connect') ? err.message : `Cannot connect to QMP at ${label}: ${err.message}`, { cause: err })
        : err;
    } finally {
      clearTimeout(timer);
    }
    return client;
  }

  /** The server's greeting: its version and offered capabilities. */
  get greeting(): QmpGreeting {
    if (!this.#greeting) throw new TransportError(`QMP connection to ${this.address} has not greeted yet`);
    return this.#greeting;
  }

  get closed(): boolean {
    return this.#closed;
  }

  /**
   * Run `command`; resolves to its `return` value. Rejects with a QmpError carrying the
   * server's error class, or a TransportError if the connection broke first.
   */
  execute<R = unknown>(command: string, args?: Record<string, unknown>, options: ExecuteOptions = {}): Promise<R> {
    const id = this.#nextId++;
    const request = args === undefined ? { execute: command, id } : { execute: command, arguments: args, id };
    const reply = this.#expectReply<R>(id, command, options.timeoutMs);
    this.#socket.write(JSON.stringify(request) + '\n');
    return reply;
  }

  /**
   * Hand `fd` to the server under `fdname` (QMP getfd with the fd attached by SCM_RIGHTS).
   * Unix sockets only. The caller keeps its own copy of `fd` and may close it afterwards.
   */
  async sendFd(fdname: string, fd: number, options: ExecuteOptions = {}): Promise<void> {
    if (!this.#unix) throw new TransportError(`Cannot pass fd "${fdname}" to ${this.address}: fds can only be passed over a unix socket`);
    const socketFd = (this.#socket as unknown as { _handle?: { fd?: number } })._handle?.fd;
    if (typeof socketFd !== 'number' || socketFd < 0) {
      throw new TransportError(`Cannot pass fd "${fdname}" to ${this.address}: the connection is closed`);
    }
    // Bytes still queued in libuv must go first, or the command would overtake them.
    while (this.#socket.writableLength > 0 && !this.#closed) {
      await new Promise<void>((resolve) => this.#socket.once('drain', resolve));
    }
    const id = this.#nextId++;
    const bytes = Buffer.from(JSON.stringify({ execute: 'getfd', arguments: { fdname }, id }) + '\n');
    const reply = this.#expectReply<unknown>(id, 'getfd', options.timeoutMs);
    let sent = -1;
    const deadline = Date.now() + (options.timeoutMs ?? 10_000);
    try {
      while ((sent = sendWithFds(socketFd, bytes, [fd])) < 0) {
        if (Date.now() > deadline) throw new TransportError(`Cannot pass fd "${fdname}" to ${this.address}: the socket stayed full`);
        await new Promise((resolve) => setTimeout(resolve, FD_SEND_RETRY_MS));
      }
    } catch (err) {
      // Nothing was sent: settle the reply we were waiting for so its timer cannot fire.
      const pending = this.#pending.get(id);
      this.#pending.delete(id);
      reply.catch(() => {});
      pending?.reject(err as Error);
      throw err;
    }
    if (sent < bytes.length) this.#socket.write(bytes.subarray(sent));
    await reply;
  }

  /**
   * The next event named `name` (and matching `predicate`): one already received and not
   * yet consumed by an earlier wait, or the next to arrive. Rejects after `timeoutMs`.
   */
  waitForEvent(name: string, predicate?: (event: QmpEvent) => boolean, timeoutMs = 30_000): Promise<QmpEvent> {
    const index = this.#buffered.findIndex((e) => e.event === name && (predicate === undefined || predicate(e)));
    if (index >= 0) return Promise.resolve(this.#buffered.splice(index, 1)[0]!);
    if (this.#closed) return Promise.reject(this.#closeError ?? new TransportError(`QMP connection to ${this.address} closed`));
    return new Promise<QmpEvent>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#waiters.delete(waiter);
        reject(new TransportError(`No QMP event ${name} from ${this.address} within ${timeoutMs} ms`));
      }, timeoutMs);
      const waiter: EventWaiter = {
        name,
        predicate,
        resolve: (event) => {
          clearTimeout(timer);
          resolve(event);
        },
        reject: (error) => {
          clearTimeout(timer);
          reject(new TransportError(`${error.message} while waiting for event ${name}`, { cause: error }));
        },
      };
      this.#waiters.add(waiter);
    });
  }

  /** Events received and not yet consumed by waitForEvent, oldest first (they stay buffered). */
  bufferedEvents(): readonly QmpEvent[] {
    return [...this.#buffered];
  }

  /** Forget buffered events, so the next waitForEvent only sees new ones. */
  clearEvents(): void {
    this.#buffered.length = 0;
  }

  /** Every event from now on, until the connection closes. */
  async *events(): AsyncGenerator<QmpEvent, void, undefined> {
    const queue: QmpEvent[] = [];
    let wake: (() => void) | undefined;
    const onEvent = (event: QmpEvent): void => {
      queue.push(event);
      wake?.();
    };
    const onClose = (): void => wake?.();
    this.on('event', onEvent);
    this.on('close', onClose);
    try {
      for (;;) {
        const next = queue.shift();
        if (next !== undefined) {
          yield next;
          continue;
        }
        if (this.#closed) return;
        await new Promise<void>((resolve) => (wake = resolve));
        wake = undefined;
      }
    } finally {
      this.off('event', onEvent);
      this.off('close', onClose);
    }
  }

  /** Close the connection; outstanding commands reject. */
  async close(): Promise<void> {
    if (this.#closed) return;
    const closed = new Promise<void>((resolve) => this.#socket.once('close', () => resolve()));
    this.#socket.end();
    const timer = setTimeout(() => this.#socket.destroy(), 1000);
    await closed;
    clearTimeout(timer);
  }

  #greeted(): Promise<QmpGreeting> {
    if (this.#greeting) return Promise.resolve(this.#greeting);
    return new Promise<QmpGreeting>((resolve, reject) => {
      if (this.#closed) {
        reject(this.#closeError ?? new TransportError('closed before the greeting'));
        return;
      }
      this.#onGreeting = resolve;
      this.#greetingFailed = reject;
    });
  }

  #expectReply<R>(id: number, command: string, timeoutMs: number | undefined): Promise<R> {
    if (this.#closed) {
      return Promise.reject(
        new TransportError(`Cannot run ${command} on ${this.address}: the connection is closed`, { cause: this.#closeError }),
      );
    }
    return new Promise<R>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      if (timeoutMs !== undefined) {
        timer = setTimeout(() => {
          this.#pending.delete(id);
          reject(new TransportError(`No reply to ${command} from ${this.address} within ${timeoutMs} ms`));
        }, timeoutMs);
      }
      this.#pending.set(id, {
        command,
        resolve: (value) => {
          clearTimeout(timer);
          resolve(value as R);
        },
        reject: (error) => {
          clearTimeout(timer);
          reject(error);
        },
      });
    });
  }

  #onData(chunk: Buffer): void {
    for (const frame of this.#framer.push(chunk)) {
      if (frame.kind === 'oversized') {
        this.#shutdown(new TransportError(`QMP server ${this.address} sent a message over ${frame.limit} bytes`));
        this.#socket.destroy();
        return;
      }
      if (frame.kind === 'invalid') {
        debug('qmp client: %s sent unframeable input (%s)', this.address, frame.reason);
        continue;
      }
      let message: unknown;
      try {
        message = JSON.parse(frame.text);
      } catch (err) {
        debug('qmp client: %s sent invalid JSON: %s', this.address, (err as Error).message);
        continue;
      }
      if (isRecord(message)) this.#onMessage(message);
    }
  }

  #onMessage(message: Record<string, unknown>): void {
    if (this.#greeting === undefined && isRecord(message['QMP'])) {
      this.#greeting = message as unknown as QmpGreeting;
      this.#onGreeting?.(this.#greeting);
      this.#onGreeting = undefined;
      this.#greetingFailed = undefined;
      return;
    }
    if (typeof message['event'] === 'string') {
      this.#onEvent(message as unknown as QmpEvent);
      return;
    }
    if (!Object.hasOwn(message, 'return') && !isRecord(message['error'])) return;
    // Replies come in order; one without a usable id (a parse error) answers the oldest.
    const id = typeof message['id'] === 'number' && this.#pending.has(message['id']) ? message['id'] : this.#pending.keys().next().value;
    if (id === undefined) return;
    const pending = this.#pending.get(id)!;
    this.#pending.delete(id);
    if (Object.hasOwn(message, 'return')) {
      pending.resolve(message['return']);
    } else {
      const error = message['error'] as Record<string, unknown>;
      const errorClass = (typeof error['class'] === 'string' ? error['class'] : 'GenericError') as QmpErrorClass;
      pending.reject(new QmpError(errorClass, typeof error['desc'] === 'string' ? error['desc'] : `${pending.command} failed`));
    }
  }

  #onEvent(event: QmpEvent): void {
    let consumed = false;
    for (const waiter of this.#waiters) {
      if (waiter.name === event.event && (waiter.predicate === undefined || waiter.predicate(event))) {
        this.#waiters.delete(waiter);
        waiter.resolve(event);
        consumed = true;
        break;
      }
    }
    if (!consumed) {
      this.#buffered.push(event);
      if (this.#buffered.length > MAX_BUFFERED_EVENTS) this.#buffered.shift();
    }
    this.emit('event', event);
  }

  #shutdown(error: Error): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#closeError = error;
    for (const [id, pending] of this.#pending) {
      this.#pending.delete(id);
      pending.reject(new TransportError(`${error.message} before the reply to ${pending.command}`, { cause: error }));
    }
    for (const waiter of this.#waiters) waiter.reject(error);
    this.#waiters.clear();
    this.#onGreeting = undefined;
    this.#greetingFailed?.(error);
    this.#greetingFailed = undefined;
    this.emit('close', error);
  }
}
