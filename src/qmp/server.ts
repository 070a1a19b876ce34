// The QMP server: listens on unix and tcp sockets, greets, negotiates capabilities,
// validates each request's shape and arguments, dispatches to registered commands and
// broadcasts events — with QEMU 7.2's error classes and wording throughout.

import { lstatSync, unlinkSync } from 'node:fs';
import net from 'node:net';
import { debuglog } from 'node:util';
import { FerryError, QmpError, TransportError } from '../errors.js';
import type { QmpCommandContext, QmpCommandDefinition, RegisteredCommand } from './command.js';
import { formatQmpAddress, parseQmpAddress, type QmpAddress } from './address.js';
import { closeQuietly, FdRegistry } from './fd-registry.js';
import { ferryQmpVersion, type QmpVersion } from './ferry-version.js';
import type { Frame } from './framing.js';
import { isRecord, QMP_MAX_MESSAGE_BYTES, qmpTimestamp, type QmpGreeting } from './protocol.js';
import { check, checkFields, t, type Fields, type Schema } from './schema.js';
import { QmpSession, type DispatchResult, type SessionHost } from './session.js';

const debug = debuglog('ferry');

export interface QmpServerOptions {
  /** What the greeting and query-version report; Ferry's own version by default. */
  readonly version?: QmpVersion;
  /** Cap on one incoming message; a client that exceeds it is told so and dropped. Default 1 MiB. */
  readonly maxMessageBytes?: number;
  /** Where getfd puts fds; a new registry by default. */
  readonly fds?: FdRegistry;
}

interface Listening {
  readonly server: net.Server;
  readonly address: string;
  readonly unixPath: string | undefined;
}

const NOT_NEGOTIATED = "Expecting capabilities negotiation with 'qmp_capabilities'";
const ALREADY_NEGOTIATED = 'Capabilities negotiation is already complete, command ignored';

export class QmpServer {
  /** Named fds from getfd; pass `server.fds.take.bind(server.fds)` where `fd:NAME` is resolved. */
  readonly fds: FdRegistry;
  readonly version: QmpVersion;
  readonly #commands = new Map<string, RegisteredCommand>();
  readonly #sessions = new Set<QmpSession>();
  readonly #listening: Listening[] = [];
  #nextSessionId = 1;
  #closed = false;

  constructor(options: QmpServerOptions = {}) {
    this.fds = options.fds ?? new FdRegistry();
    this.version = options.version ?? ferryQmpVersion();
    this.#host = {
      maxMessageBytes: options.maxMessageBytes ?? QMP_MAX_MESSAGE_BYTES,
      greetingLine: () => JSON.stringify(this.greeting()),
      dispatch: (session, frame) => this.#dispatch(session, frame),
      sessionClosed: (session) => {
        this.#sessions.delete(session);
        debug('qmp: session %d closed', session.id);
      },
    };
    this.#registerBuiltins();
  }

  /**
   * Add a command. Its arguments are validated against `args` before the handler runs;
   * throws if the name is taken (two subsystems claiming one command is a wiring bug).
   */
  register<const F extends Fields = Record<never, never>, const S extends Schema | undefined = undefined>(
    definition: QmpCommandDefinition<F, S>,
  ): void {
    const { name } = definition;
    if (typeof name !== 'string' || name === '') throw new TypeError('A QMP command needs a non-empty name');
    if (this.#commands.has(name)) {
      throw new QmpError('GenericError', `Cannot register QMP command "${name}": it is already registered`);
    }
    this.#commands.set(name, {
      name,
      args: definition.args ?? {},
      returns: definition.returns,
      handler: definition.handler as RegisteredCommand['handler'],
    });
  }

  /**
   * Run a registered command from inside another one (HMP runs the QMP command behind
   * each of its commands, as QEMU's does): the same argument checks, the caller's context.
   * Throws what the command throws; an unknown name is a CommandNotFound QmpError.
   */
  async invoke(name: string, args: Record<string, unknown>, ctx: QmpCommandContext): Promise<unknown> {
    const command = this.#commands.get(name);
    if (command === undefined) throw new QmpError('CommandNotFound', `The command ${name} has not been found`);
    const result = await command.handler(checkFields(command.args, args), ctx);
    return command.returns === undefined ? result : checkReturn(name, command.returns, result);
  }

  /** Remove a command; returns whether it was there. Built-ins can be replaced this way. */
  unregister(name: string): boolean {
    return this.#commands.delete(name);
  }

  /** Registered command names, in registration order. */
  commandNames(): string[] {
    return [...this.#commands.keys()];
  }

  /** Clients connected now. */
  get sessionCount(): number {
    return this.#sessions.size;
  }

  /** Addresses listened on, as actually bound ("tcp:127.0.0.1:40123" when port 0 was asked). */
  get addresses(): string[] {
    return this.#listening.map((l) => l.address);
  }

  /**
   * Listen on `unix:/path` (or a bare path), `tcp:HOST:PORT` or `tcp:[::1]:PORT`; may be
   * called more than once. Resolves to the bound address. A stale unix socket file is
   * replaced, as QEMU does; any other file in the way is an error.
   */
  async listen(addressText: string): Promise<string> {
    if (this.#closed) throw new TransportError(`Cannot listen on ${addressText}: the QMP server is closed`);
    const address = parseQmpAddress(addressText);
    const unixPath = address.kind === 'unix' ? address.path : undefined;
    if (unixPath !== undefined) removeStaleSocket(unixPath, addressText);

    const server = net.createServer({ pauseOnConnect: true, allowHalfOpen: true });
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err) =>
        reject(new TransportError(`Cannot listen for QMP on ${addressText}: ${err.message}`, { cause: err })),
      );
      if (address.kind === 'unix') server.listen(address.path, resolve);
      else server.listen(address.port, address.host, resolve);
    });
    const bound = boundAddress(server, address);
    server.on('error', (err) => debug('qmp: listener %s failed: %s', bound, err.message));
    server.on('connection', (socket) => this.#accept(socket, address.kind, bound));
    this.#listening.push({ server, address: bound, unixPath });
    debug('qmp: listening on %s', bound);
    return bound;
  }

  /**
   * Send an event to every client that finished capabilities negotiation. `data` is
   * omitted from the message when not given (QEMU's STOP/RESUME have none).
   */
  emit(event: string, data?: Record<string, unknown>): void {
    if (typeof event !== 'string' || event === '') throw new TypeError('A QMP event needs a non-empty name');
    const message = data === undefined
      ? { event, timestamp: qmpTimestamp() }
      : { event, data, timestamp: qmpTimestamp() };
    const line = JSON.stringify(message);
    for (const session of this.#sessions) if (session.negotiated) session.write(line);
  }

  /** Stop listening, drop every client, close every fd still held; removes unix socket files. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const session of [...this.#sessions]) session.close();
    await Promise.all(
      this.#listening.map(
        (l) =>
          new Promise<void>((resolve) => {
            l.server.close(() => resolve());
            if (l.unixPath !== undefined) removeStaleSocket(l.unixPath, l.address, true);
          }),
      ),
    );
    this.#listening.length = 0;
    this.fds.closeAll();
  }

  #accept(socket: net.Socket, transport: 'unix' | 'tcp', address: string): void {
    if (this.#closed) {
      socket.destroy();
      return;
    }
    const session = new QmpSession(this.#nextSessionId++, socket, transport, address, this.#host);
    this.#sessions.add(session);
    debug('qmp: session %d connected on %s', session.id, address);
    try {
      session.start();
    } catch (err) {
      // E.g. EMFILE from dup(): this client cannot be served, the others carry on.
      debug('qmp: session %d could not start: %s', session.id, err instanceof Error ? err.message : String(err));
      session.close();
    }
  }

  readonly #host: SessionHost;

  /** The greeting every client gets on connect. Ferry offers no capabilities (no OOB). */
  greeting(): QmpGreeting {
    return { QMP: { version: this.version, capabilities: [] } };
  }

  async #dispatch(session: QmpSession, frame: Exclude<Frame, { kind: 'oversized' }>): Promise<DispatchResult> {
    if (frame.kind === 'invalid') return reply(errorBody('GenericError', `JSON parse error, ${frame.reason}`));
    let request: unknown;
    try {
      request = JSON.parse(frame.text);
    } catch (err) {
      return reply(errorBody('GenericError', `JSON parse error, ${err instanceof Error ? err.message : String(err)}`));
    }
    if (!isRecord(request)) return reply(errorBody('GenericError', 'QMP input must be a JSON object'));

    const hasId = Object.hasOwn(request, 'id');
    const id = request['id'];
    const answer = (body: Record<string, unknown>, after: readonly (() => void)[] = []): DispatchResult =>
      reply(hasId ? { ...body, id } : body, after);

    const shapeError = checkRequestShape(request);
    if (shapeError !== undefined) return answer(errorBody('GenericError', shapeError));
    const name = request['execute'] as string;

    if (!session.negotiated && name !== 'qmp_capabilities') return answer(errorBody('CommandNotFound', NOT_NEGOTIATED));
    if (session.negotiated && name === 'qmp_capabilities') return answer(errorBody('CommandNotFound', ALREADY_NEGOTIATED));
    const command = this.#commands.get(name);
    if (command === undefined) return answer(errorBody('CommandNotFound', `The command ${name} has not been found`));

    const after: (() => void)[] = [];
    try {
      const args = checkFields(command.args, (request['arguments'] ?? {}) as Record<string, unknown>);
      const ctx: QmpCommandContext = {
        session,
        fds: this.fds,
        takePassedFd: () => session.takePassedFd(),
        afterReply: (fn) => void after.push(fn),
        emit: (event, data) => this.emit(event, data),
      };
      let result = await command.handler(args, ctx);
      if (command.returns !== undefined) result = checkReturn(name, command.returns, result);
      const value = result === undefined ? {} : result;
      // Serialise here so a value JSON cannot carry (a BigInt, a cycle) becomes this command's error.
      const line = JSON.stringify(hasId ? { return: value, id } : { return: value });
      // Negotiation counts from the reply on: the next command, and any event, see it.
      if (name === 'qmp_capabilities') return { line, after, written: () => (session.negotiated = true) };
      return { line, after };
    } catch (err) {
      return answer(errorBody(...classify(name, err)));
    }
  }

  #registerBuiltins(): void {
    this.register({
      name: 'qmp_capabilities',
      args: { 'enable?': t.array(t.enum(['oob'])) },
      handler: ({ enable }) => {
        // The greeting offers nothing, so any capability asked for is unavailable.
        const wanted = enable?.[0];
        if (wanted !== undefined) throw new QmpError('GenericError', `Capability '${wanted}' not available`);
        return {};
      },
    });
    this.register({
      name: 'query-commands',
      handler: () => this.commandNames().map((name) => ({ name })),
    });
    this.register({
      name: 'query-version',
      handler: () => this.version,
    });
    this.register({
      name: 'getfd',
      args: { fdname: t.str },
      handler: ({ fdname }, ctx) => {
        const fd = ctx.takePassedFd();
        if (fd === undefined) throw new QmpError('GenericError', 'No file descriptor supplied via SCM_RIGHTS');
        try {
          ctx.fds.add(fdname, fd);
        } catch (err) {
          closeQuietly(fd);
          throw err;
        }
        debug('qmp: session %d passed fd %d as "%s"', ctx.session.id, fd, fdname);
        return {};
      },
    });
    this.register({
      name: 'closefd',
      args: { fdname: t.str },
      handler: ({ fdname }, ctx) => {
        ctx.fds.close(fdname);
        return {};
      },
    });
  }
}

function reply(body: Record<string, unknown>, after: readonly (() => void)[] = []): DispatchResult {
  return { line: JSON.stringify(body), after };
}

function errorBody(errorClass: string, desc: string): Record<string, unknown> {
  return { error: { class: errorClass, desc } };
}

/** QEMU's qmp_dispatch_check_obj, member by member, in the order the client wrote them. */
function checkRequestShape(request: Record<string, unknown>): string | undefined {
  let sawExecute = false;
  for (const [key, value] of Object.entries(request)) {
    if (key === 'id') continue;
    if (key === 'execute') {
      if (typeof value !== 'string') return "QMP input member 'execute' must be a string";
      sawExecute = true;
    } else if (key === 'arguments') {
      if (!isRecord(value)) return "QMP input member 'arguments' must be an object";
    } else if (key === 'exec-oob') {
      return "QMP input member 'exec-oob' is unexpected: out-of-band execution is not supported (the 'oob' capability is not offered)";
    } else {
      return `QMP input member '${key}' is unexpected`;
    }
  }
  return sawExecute ? undefined : "QMP input lacks member 'execute'";
}

function checkReturn(name: string, schema: Schema, result: unknown): unknown {
  try {
    return check(schema, result, 'return');
  } catch (err) {
    throw new QmpError('GenericError', `Command ${name} returned a value that does not match its schema: ${(err as Error).message}`, {
      cause: err,
    });
  }
}

function classify(name: string, err: unknown): [string, string] {
  if (err instanceof QmpError) return [err.errorClass, err.message];
  if (err instanceof FerryError) return ['GenericError', err.message];
  debug('qmp: command %s failed unexpectedly: %s', name, err instanceof Error ? err.stack : String(err));
  if (err instanceof Error) return ['GenericError', err.message || `Command ${name} failed: ${err.name}`];
  return ['GenericError', `Command ${name} failed: ${String(err)}`];
}

function boundAddress(server: net.Server, requested: QmpAddress): string {
  if (requested.kind === 'unix') return formatQmpAddress(requested);
  const info = server.address();
  if (info === null || typeof info === 'string') return formatQmpAddress(requested);
  return formatQmpAddress({ kind: 'tcp', host: info.address, port: info.port });
}

/** Remove a leftover socket file at `path`; refuse to touch anything that is not a socket. */
function removeStaleSocket(path: string, what: string, quiet = false): void {
  let isSocket: boolean;
  try {
    isSocket = lstatSync(path).isSocket();
  } catch {
    return; // nothing there
  }
  if (!isSocket) {
    if (quiet) return;
    throw new TransportError(`Cannot listen for QMP on ${what}: ${path} exists and is not a socket`);
  }
  try {
    unlinkSync(path);
  } catch (err) {
    if (!quiet) throw new TransportError(`Cannot listen for QMP on ${what}: cannot remove the old socket ${path}: ${(err as Error).message}`, { cause: err });
  }
}
