// What the QMP server tests share: a bare-socket client that speaks byte by byte, a
// server with a test command, and cleanup of every server and client a test file made
// (registered with node:test's after() in the importing file's run).

import { after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { JsonFramer } from '../src/qmp/framing.js';
import { QmpServer } from '../src/qmp/server.js';
import { t } from '../src/qmp/schema.js';

export const dir = mkdtempSync(join(tmpdir(), 'ferry-qmp-'));
let socketCount = 0;
export const sockPath = (): string => join(dir, `s${++socketCount}.sock`);

export type Json = Record<string, unknown>;

/** A bare-socket client: sends raw bytes, reads framed JSON messages. */
export class Raw {
  readonly socket: net.Socket;
  readonly #messages: Json[] = [];
  readonly #framer = new JsonFramer({ maxMessageBytes: 64 * 1024 * 1024 });
  #wake: (() => void) | undefined;
  ended = false;

  private constructor(socket: net.Socket) {
    this.socket = socket;
    socket.on('data', (chunk) => {
      for (const f of this.#framer.push(chunk)) if (f.kind === 'message') this.#messages.push(JSON.parse(f.text) as Json);
      this.#wake?.();
    });
    socket.on('close', () => {
      this.ended = true;
      this.#wake?.();
    });
    socket.on('error', () => {});
  }

  static async open(address: string): Promise<Raw> {
    const socket = address.startsWith('tcp:')
      ? net.connect(Number(address.slice(address.lastIndexOf(':') + 1)), address.slice(4, address.lastIndexOf(':')).replace(/^\[|\]$/g, ''))
      : net.connect(address.replace(/^unix:/, ''));
    await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
    const raw = new Raw(socket);
    raws.add(raw);
    return raw;
  }

  /** Open, read the greeting, negotiate. */
  static async ready(address: string): Promise<Raw> {
    const raw = await Raw.open(address);
    await raw.next();
    assert.deepEqual(await raw.ask('{"execute":"qmp_capabilities"}'), { return: {} });
    return raw;
  }

  send(text: string | Uint8Array): void {
    this.socket.write(text);
  }

  async next(timeoutMs = 3000): Promise<Json> {
    const deadline = Date.now() + timeoutMs;
    while (this.#messages.length === 0) {
      if (this.ended) throw new Error('connection closed while waiting for a message');
      if (Date.now() > deadline) throw new Error('timed out waiting for a message');
      await new Promise<void>((resolve) => {
        this.#wake = resolve;
        setTimeout(resolve, 20);
      });
    }
    return this.#messages.shift()!;
  }

  async ask(line: string): Promise<Json> {
    this.send(line + '\n');
    return this.next();
  }

  /** Nothing arrives within `ms`. */
  async quiet(ms = 100): Promise<void> {
    await new Promise((r) => setTimeout(r, ms));
    assert.deepEqual(this.#messages, []);
  }

  async closed(timeoutMs = 3000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!this.ended) {
      if (Date.now() > deadline) throw new Error('connection still open');
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  destroy(): void {
    this.socket.destroy();
  }
}

export const err = (cls: string, desc: string, id?: unknown): Json =>
  id === undefined ? { error: { class: cls, desc } } : { error: { class: cls, desc }, id };

export async function stillServes(raw: Raw): Promise<void> {
  const reply = await raw.ask('{"execute":"query-version","id":"alive"}');
  assert.equal(reply['id'], 'alive');
  assert.ok('return' in reply, `expected a return, got ${JSON.stringify(reply)}`);
}

// Every server and raw client a test makes is closed at the end of the file even when
// the test fails half-way, so a failure reports instead of hanging the run.
const servers = new Set<QmpServer>();
const raws = new Set<Raw>();
after(async () => {
  for (const raw of raws) raw.destroy();
  await Promise.all([...servers].map((s) => s.close()));
  rmSync(dir, { recursive: true, force: true });
});

export function track(server: QmpServer): QmpServer {
  servers.add(server);
  return server;
}

export function newServer(): QmpServer {
  const server = track(new QmpServer());
  server.register({
    name: 'x-test-migrate',
    args: {
      uri: t.str,
      'detach?': t.bool,
      'caps?': t.array(t.object({ capability: t.enum(['xbzrle', 'events']), state: t.bool })),
    },
    handler: (args) => ({ got: args }),
  });
  return server;
}

