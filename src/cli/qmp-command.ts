// `ferry qmp SOCKET COMMAND [key=value …]`: sends one QMP command to Ferry or QEMU and
// prints its `return` as JSON; arguments are typed by JSON where they parse, and
// `key.sub=value` builds nested objects.

import { ConfigError, QmpError, errorMessage } from '../errors.js';
import { QmpClient } from '../qmp/client.js';

/** Where the command writes; the process's streams unless a caller (a test) captures them. */
export interface QmpCommandIo {
  readonly stdout: { write(text: string): unknown };
  readonly stderr: { write(text: string): unknown };
}

const PROCESS_IO: QmpCommandIo = { stdout: process.stdout, stderr: process.stderr };

/** Exit codes: 0 success, 1 the command or the connection failed, 2 the arguments are malformed. */
export const EXIT_OK = 0;
export const EXIT_FAILED = 1;
export const EXIT_USAGE = 2;

/**
 * Turn `key=value` words into a QMP arguments object. A value is JSON when it parses as
 * JSON (`300`, `true`, `null`, `{"a":1}`, `["x"]`, `"300"` for a string of digits), and a
 * plain string otherwise. `a.b=1` sets member `b` of object `a`.
 */
export function parseQmpArguments(words: readonly string[]): Record<string, unknown> {
  const args: Record<string, unknown> = {};
  for (const word of words) {
    const eq = word.indexOf('=');
    if (eq <= 0) throw new ConfigError(`Invalid QMP argument "${word}": expected key=value`);
    const path = word.slice(0, eq).split('.');
    if (path.some((part) => part === '')) throw new ConfigError(`Invalid QMP argument "${word}": empty member name in "${word.slice(0, eq)}"`);
    const value = parseValue(word.slice(eq + 1));
    let target = args;
    for (let i = 0; i < path.length - 1; i++) {
      const part = path[i]!;
      const existing = Object.hasOwn(target, part) ? target[part] : undefined;
      if (existing === undefined) {
        const child: Record<string, unknown> = {};
        target[part] = child;
        target = child;
      } else if (typeof existing === 'object' && existing !== null && !Array.isArray(existing)) {
        target = existing as Record<string, unknown>;
      } else {
        throw new ConfigError(`Invalid QMP argument "${word}": "${path.slice(0, i + 1).join('.')}" is already set to a non-object value`);
      }
    }
    const last = path[path.length - 1]!;
    if (Object.hasOwn(target, last)) throw new ConfigError(`Invalid QMP argument "${word}": "${path.join('.')}" is given twice`);
    target[last] = value;
  }
  return args;
}

/**
 * Run one HMP command line through `human-monitor-command` on `socket` and print its text
 * as the monitor would (CR LF made LF) — `virsh qemu-monitor-command --hmp`, for Ferry or
 * QEMU. HMP reports its own errors as text; the exit code is 1 when that text starts as
 * an error does ("Error: …", an unknown command, a usage message).
 */
export async function hmpCommand(socket: string, words: string[], io: QmpCommandIo = PROCESS_IO): Promise<number> {
  return withClient(socket, io, async (client) => {
    const text = String(await client.execute('human-monitor-command', { 'command-line': words.join(' ') })).replace(/\r\n/g, '\n');
    io.stdout.write(text);
    return /^(Error: |unknown command: )/.test(text) || /\nTry "help [^"]+" for more information\n$/.test(text) ? EXIT_FAILED : EXIT_OK;
  });
}

/** Connect to `socket`, run `fn`, close; a failure to connect or a command's error goes to stderr as `error: …` and exits 1. */
async function withClient(socket: string, io: QmpCommandIo, fn: (client: QmpClient) => Promise<number>): Promise<number> {
  let client: QmpClient | undefined;
  try {
    client = await QmpClient.connect(socket);
    return await fn(client);
  } catch (err) {
    if (err instanceof QmpError) io.stderr.write(`error: ${err.errorClass}: ${err.message}\n`);
    else io.stderr.write(`error: ${errorMessage(err)}\n`);
    return EXIT_FAILED;
  } finally {
    await client?.close();
  }
}

function parseValue(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

/**
 * Run one QMP command on `socket` (a unix path, `unix:PATH` or `tcp:HOST:PORT`) and print
 * its return value. Resolves to the process exit code; errors go to stderr as
 * `error: <class>: <desc>`.
 */
export async function qmpCommand(
  socket: string,
  command: string,
  kv: string[],
  opts: { pretty?: boolean },
  io: QmpCommandIo = PROCESS_IO,
): Promise<number> {
  let args: Record<string, unknown>;
  try {
    args = parseQmpArguments(kv);
  } catch (err) {
    io.stderr.write(`error: ${errorMessage(err)}\n`);
    return EXIT_USAGE;
  }
  return withClient(socket, io, async (client) => {
    const result = await client.execute(command, kv.length === 0 ? undefined : args);
    io.stdout.write(JSON.stringify(result, null, opts.pretty ? 2 : undefined) + '\n');
    return EXIT_OK;
  });
}
