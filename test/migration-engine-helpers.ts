// Shared set-up for the migration engine's integration tests: two fake VMs, each with a
// Migration, joined by an in-memory channel pair (or any channels a test supplies).

import { createHash } from 'node:crypto';
import { setImmediate } from 'node:timers';
import { Migration } from '../src/migration/migration.js';
import { FakeVm } from '../src/migration/fake-vm.js';
import type { FakeVmOptions } from '../src/migration/fake-vm.js';
import { createMemoryChannelPair } from '../src/stream/memory-channel.js';
import type { Channel, Listener } from '../src/transport/channel.js';

export interface RecordedEvent {
  readonly event: string;
  readonly data: Record<string, unknown>;
}

export interface Side {
  readonly vm: FakeVm;
  readonly migration: Migration;
  readonly events: RecordedEvent[];
}

/** A listener whose one connection is `channel`; asked for more, it waits, as a real one nobody else connects to. */
export function listenerFor(channel: Promise<Channel> | Channel): Listener {
  let accepted = false;
  return {
    description: 'memory:listen',
    address: 'memory:b',
    accept: async () => {
      if (accepted) return new Promise<never>(() => {});
      accepted = true;
      return channel;
    },
    close: async () => {},
  };
}

export function makeSide(vmOptions: FakeVmOptions, io: { connect?: () => Promise<Channel>; listen?: () => Promise<Listener> }, uuid?: Uint8Array, extra?: { multifdConnectWaitMs?: number; findObject?: (id: string) => { readonly type: string } | undefined }): Side {
  const vm = new FakeVm(vmOptions);
  const events: RecordedEvent[] = [];
  const migration = new Migration({
    vm,
    connect: io.connect ?? (() => Promise.reject(new Error('this side does not connect'))),
    listen: io.listen ?? (() => Promise.reject(new Error('this side does not listen'))),
    now: () => performance.now(),
    emit: (event, data) => events.push({ event, data }),
    schedule: (fn) => setImmediate(fn),
    // FERRY_TEST_TRACE=1: the engine's trace (what NODE_DEBUG=ferry shows of a real VM) on stderr.
    ...(process.env['FERRY_TEST_TRACE'] ? { trace: (m: string) => console.error(m) } : {}),
    ...(uuid !== undefined ? { uuid } : {}),
    ...extra,
  });
  return { vm, migration, events };
}

/**
 * Connections through memory pairs, as many as a source makes (the main one and multifd
 * channels): the listener hands out the far end of each in order. `wrap` may stand in for
 * the source's end of connection `n` (a slower link, a sniffer); `made` holds those ends.
 */
export function memoryNetwork(options?: { address?: string; wrap?: (near: Channel, n: number) => Channel }): { connect: () => Promise<Channel>; listen: () => Promise<Listener>; made: Channel[] } {
  const queue: Channel[] = [];
  const waiters: Array<(c: Channel) => void> = [];
  const made: Channel[] = [];
  const connect = async (): Promise<Channel> => {
    const [near, far] = createMemoryChannelPair({ highWaterMark: 256 * 1024 });
    const out = options?.wrap?.(near, made.length) ?? near;
    made.push(out);
    const waiter = waiters.shift();
    if (waiter) waiter(far);
    else queue.push(far);
    return out;
  };
  const listener: Listener = {
    description: 'memory:listen',
    address: options?.address ?? 'unix:/memory/listen',
    accept: () => {
      const next = queue.shift();
      return next ? Promise.resolve(next) : new Promise((resolve) => waiters.push(resolve));
    },
    close: async () => {},
  };
  return { connect, listen: async () => listener, made };
}

/** A source and a destination joined by an in-memory pair with socket-like backpressure. */
export function makePair(
  memorySize: number,
  options?: { highWaterMark?: number; source?: Partial<FakeVmOptions>; destination?: Partial<FakeVmOptions>; uuids?: { src?: Uint8Array; dst?: Uint8Array } },
): { src: Side; dst: Side; channels: [Channel, Channel] } {
  const channels = createMemoryChannelPair(options?.highWaterMark !== undefined ? { highWaterMark: options.highWaterMark } : undefined);
  const src = makeSide({ memorySize, ...options?.source }, { connect: async () => channels[0] }, options?.uuids?.src);
  const dst = makeSide({ memorySize, incoming: true, ...options?.destination }, { listen: async () => listenerFor(channels[1]) }, options?.uuids?.dst);
  return { src, dst, channels };
}

/** Start the destination listening and the source migrating, and wait until both sides have settled. */
export async function migrateToEnd(src: Side, dst: Side): Promise<void> {
  await dst.migration.migrateIncoming('memory:');
  src.migration.migrate('memory:');
  await src.migration.whenSettled();
  await dst.migration.whenIncomingSettled();
}

export function digest(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

export async function waitFor(what: string, predicate: () => boolean, timeoutMs = 10_000): Promise<void> {
  const start = performance.now();
  while (!predicate()) {
    if (performance.now() - start > timeoutMs) throw new Error(`Timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

export function statuses(events: readonly RecordedEvent[]): unknown[] {
  return events.filter((e) => e.event === 'MIGRATION').map((e) => e.data['status']);
}
