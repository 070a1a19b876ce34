// What one migration looked like, as data a report can draw: every query-migrate answer
// with its time, the MIGRATION_PASS events, and per-pass figures — from Ferry's
// x-ferry-query-migrate-passes where the peer has it, else derived from the samples.

import type { QmpClient } from '../qmp/client.js';
import type { QueryMigrateInfo } from '../cli/migrate-command.js';

export const PASSES_COMMAND = 'x-ferry-query-migrate-passes';

export interface MigrationSample {
  /** Milliseconds since `migrate` was sent. */
  readonly atMs: number;
  readonly info: QueryMigrateInfo;
}

export interface PassFigures {
  readonly pass: number;
  readonly startMs: number;
  readonly endMs: number;
  readonly pagesSent: number;
  readonly zeroPages: number;
  readonly bytesSent: number;
  /** Pages the guest dirtied while this pass was being sent (what the next pass has to send). */
  readonly dirtyPages: number;
}

/** Where the per-pass figures came from: exact from the engine, or estimated from polls. */
export type PassSource = 'engine' | 'samples';

export interface MigrationRecord {
  /** A short title: "Ferry, 256 MiB, tcp, limit 300 ms, rep 2". */
  readonly title: string;
  /** "Ferry" or "QEMU 7.2.22", as the greeting said. */
  readonly peer: string;
  /** The accelerator the source ran under ("sim", "tcg", "kvm"), said plainly in every output. */
  readonly accelerator: string;
  readonly uri: string;
  readonly memoryBytes: number;
  readonly downtimeLimitMs: number;
  /** Bytes/s; undefined means the peer's default was left alone. */
  readonly maxBandwidth: number | undefined;
  readonly status: string;
  /** Set when the run was stopped at a time cap instead of finishing on its own. */
  readonly cancelledAfterMs?: number;
  readonly samples: readonly MigrationSample[];
  readonly passEvents: readonly { readonly pass: number; readonly atMs: number }[];
  readonly passes: readonly PassFigures[];
  readonly passSource: PassSource;
  /** When the source stopped the guest for the last pass, ms since migrate (estimated for QEMU). */
  readonly switchoverMs: number | undefined;
  readonly final: QueryMigrateInfo;
  /** Free-form lines shown under the title (host, guest, notes). */
  readonly notes: readonly string[];
}

/** The last sample with each dirty-sync-count, in order. */
function lastSampleOfEachSync(samples: readonly MigrationSample[]): MigrationSample[] {
  const out: MigrationSample[] = [];
  for (const sample of samples) {
    const ram = sample.info.ram;
    if (!ram) continue;
    const last = out[out.length - 1];
    if (last && last.info.ram!['dirty-sync-count'] === ram['dirty-sync-count']) out[out.length - 1] = sample;
    else out.push(sample);
  }
  return out;
}

/**
 * Per-pass figures estimated from polled query-migrate answers: a pass is the stretch
 * between two changes of dirty-sync-count, its figures the deltas of ram.normal,
 * ram.duplicate and ram.transferred across it; what it dirtied is the `remaining` seen
 * first after the next sync. Coarse (a pass shorter than the poll interval merges into
 * its neighbour), which is why the engine's own figures are preferred.
 */
export function derivePasses(samples: readonly MigrationSample[]): PassFigures[] {
  const ends = lastSampleOfEachSync(samples);
  const firstOfSync = new Map<number, MigrationSample>();
  for (const sample of samples) {
    const sync = sample.info.ram?.['dirty-sync-count'];
    if (sync !== undefined && !firstOfSync.has(sync)) firstOfSync.set(sync, sample);
  }
  const passes: PassFigures[] = [];
  let previous: { atMs: number; normal: number; duplicate: number; transferred: number } = { atMs: 0, normal: 0, duplicate: 0, transferred: 0 };
  for (let i = 0; i < ends.length; i++) {
    const end = ends[i]!;
    const ram = end.info.ram!;
    const sync = ram['dirty-sync-count'];
    // dirty-sync-count 0 is setup: pass 1 starts where it ends.
    if (sync === 0) {
      previous = { atMs: end.atMs, normal: ram.normal, duplicate: ram.duplicate, transferred: ram.transferred };
      continue;
    }
    const pageSize = ram['page-size'] ?? 4096;
    const nextStart = firstOfSync.get(sync + 1);
    const dirtyPages = nextStart?.info.ram ? Math.round(nextStart.info.ram.remaining / pageSize) : Math.round(ram.remaining / pageSize);
    passes.push({
      pass: sync,
      startMs: previous.atMs,
      endMs: end.atMs,
      pagesSent: Math.max(0, ram.normal - previous.normal),
      zeroPages: Math.max(0, ram.duplicate - previous.duplicate),
      bytesSent: Math.max(0, ram.transferred - previous.transferred),
      dirtyPages,
    });
    previous = { atMs: end.atMs, normal: ram.normal, duplicate: ram.duplicate, transferred: ram.transferred };
  }
  return passes;
}

/** Parse the answer of x-ferry-query-migrate-passes; undefined when it is not that shape. */
export function parseEnginePasses(reply: unknown): { passes: PassFigures[]; switchoverMs: number | undefined; downtimeLimitMs: number | undefined } | undefined {
  if (typeof reply !== 'object' || reply === null) return undefined;
  const record = reply as Record<string, unknown>;
  if (!Array.isArray(record['passes'])) return undefined;
  const passes: PassFigures[] = [];
  for (const item of record['passes'] as unknown[]) {
    if (typeof item !== 'object' || item === null) return undefined;
    const p = item as Record<string, unknown>;
    const num = (key: string): number => (typeof p[key] === 'number' ? (p[key] as number) : 0);
    passes.push({
      pass: num('pass'),
      startMs: num('start-ms'),
      endMs: num('end-ms'),
      pagesSent: num('pages-sent'),
      zeroPages: num('zero-pages'),
      bytesSent: num('bytes-sent'),
      dirtyPages: num('dirty-pages'),
    });
  }
  const switchover = record['switchover-ms'];
  const limit = record['downtime-limit'];
  return {
    passes,
    switchoverMs: typeof switchover === 'number' ? switchover : undefined,
    downtimeLimitMs: typeof limit === 'number' ? limit : undefined,
  };
}

/**
 * QEMU does not say when it stopped the guest; total-time minus downtime is when it did,
 * as both are measured on the source from the same start.
 */
export function estimateSwitchoverMs(final: QueryMigrateInfo): number | undefined {
  if (final.status !== 'completed' || final['total-time'] === undefined || final.downtime === undefined) return undefined;
  return Math.max(0, final['total-time'] - final.downtime);
}

export interface RecorderContext {
  readonly title: string;
  readonly accelerator: string;
  readonly uri: string;
  readonly memoryBytes: number;
  readonly downtimeLimitMs: number;
  readonly maxBandwidth: number | undefined;
  readonly notes?: readonly string[];
}

/**
 * Collects one migration while runMigration drives it: pass `recorder.onSample` as the
 * onSample hook, call start() before migrate and finish() after it ended.
 */
export class MigrationRecorder {
  readonly #client: QmpClient;
  readonly #samples: MigrationSample[] = [];
  readonly #passEvents: { pass: number; atMs: number }[] = [];
  #startedAt = 0;
  #onEvent = (event: { event: string; data?: Record<string, unknown> }): void => {
    if (event.event !== 'MIGRATION_PASS') return;
    const pass = event.data?.['pass'];
    if (typeof pass === 'number') this.#passEvents.push({ pass, atMs: performance.now() - this.#startedAt });
  };

  constructor(client: QmpClient) {
    this.#client = client;
  }

  /**
   * Call right before runMigration: its clock starts a few ms later (after setting the
   * parameters), which puts pass events that much late on the charts — well under a poll.
   */
  start(): void {
    this.#startedAt = performance.now();
    this.#client.on('event', this.#onEvent);
  }

  readonly onSample = (info: QueryMigrateInfo, atMs: number): void => {
    this.#samples.push({ atMs, info });
  };

  get samples(): readonly MigrationSample[] {
    return this.#samples;
  }

  /** Stop listening and build the record; asks the engine for its pass figures where it has them. */
  async finish(context: RecorderContext, final: QueryMigrateInfo, cancelledAfterMs?: number): Promise<MigrationRecord> {
    this.#client.off('event', this.#onEvent);
    const greeting = this.#client.greeting as unknown as { QMP?: { version?: { qemu?: { major?: number; minor?: number; micro?: number }; package?: string } } };
    const version = greeting.QMP?.version;
    const isFerry = (version?.package ?? '').toLowerCase().includes('ferry');
    const versionText = version?.qemu ? `${version.qemu.major}.${version.qemu.minor}.${version.qemu.micro}` : '';
    const peer = isFerry ? 'Ferry' : `QEMU ${versionText}`.trim();

    let passes = derivePasses(this.#samples);
    let passSource: PassSource = 'samples';
    let switchoverMs = estimateSwitchoverMs(final);
    if (await this.#hasCommand(PASSES_COMMAND)) {
      const engine = parseEnginePasses(await this.#client.execute(PASSES_COMMAND));
      if (engine && engine.passes.length > 0) {
        passes = engine.passes;
        passSource = 'engine';
        if (engine.switchoverMs !== undefined) switchoverMs = engine.switchoverMs;
      }
    }
    return {
      title: context.title,
      peer,
      accelerator: context.accelerator,
      uri: context.uri,
      memoryBytes: context.memoryBytes,
      downtimeLimitMs: context.downtimeLimitMs,
      maxBandwidth: context.maxBandwidth,
      status: final.status ?? 'unknown',
      ...(cancelledAfterMs !== undefined ? { cancelledAfterMs } : {}),
      samples: [...this.#samples],
      passEvents: [...this.#passEvents],
      passes,
      passSource,
      switchoverMs,
      final,
      notes: context.notes ?? [],
    };
  }

  async #hasCommand(name: string): Promise<boolean> {
    const commands = await this.#client.execute<Array<{ name: string }>>('query-commands');
    return Array.isArray(commands) && commands.some((c) => c.name === name);
  }
}

export interface SourceFacts {
  /** "kvm", "tcg" (QEMU without KVM), "sim", "v86": what ran the source's guest. */
  readonly accelerator: string;
  readonly downtimeLimitMs: number;
  readonly maxBandwidth: number | undefined;
}

/** Ask the source what it runs on and with which limits, the same way for Ferry and QEMU. */
export async function querySourceFacts(client: QmpClient): Promise<SourceFacts> {
  const commands = await client.execute<Array<{ name: string }>>('query-commands');
  const has = (name: string): boolean => commands.some((c) => c.name === name);
  let accelerator = 'unknown';
  if (has('x-ferry-query-guest')) {
    const guest = await client.execute<{ accel?: string }>('x-ferry-query-guest');
    accelerator = guest.accel ?? 'unknown';
  } else if (has('query-kvm')) {
    // QEMU without KVM runs TCG (x86 has no other accelerator in Debian's build besides these two).
    const kvm = await client.execute<{ enabled?: boolean }>('query-kvm');
    accelerator = kvm.enabled ? 'kvm' : 'tcg';
  }
  const params = await client.execute<Record<string, unknown>>('query-migrate-parameters');
  const limit = params['downtime-limit'];
  const bandwidth = params['max-bandwidth'];
  return {
    accelerator,
    downtimeLimitMs: typeof limit === 'number' ? limit : 300,
    maxBandwidth: typeof bandwidth === 'number' ? bandwidth : undefined,
  };
}

/**
 * The final query-migrate answer with its figures filled in. QEMU 7.2 sets the state to
 * completed in migration_completion() and only then, in migration_iteration_finish(),
 * computes total-time and downtime: a poll in between reads "completed" with both 0.
 * Ask again (briefly) until they appear.
 */
export async function settleFinalInfo(client: QmpClient, info: QueryMigrateInfo, timeoutMs = 2000): Promise<QueryMigrateInfo> {
  const deadline = performance.now() + timeoutMs;
  let current = info;
  while (current.status === 'completed' && !current['total-time'] && performance.now() < deadline) {
    await new Promise((r) => setTimeout(r, 10));
    current = await client.execute<QueryMigrateInfo>('query-migrate');
  }
  return current;
}
