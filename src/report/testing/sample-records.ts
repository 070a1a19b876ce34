// Made-up but self-consistent migrations and benchmark results for the report tests: a
// pre-copy run polled every 50 ms (three passes, then the switchover) and a small bench.

import type { BenchCell, BenchResults, BenchRun } from '../bench-summary.js';
import { cellKey } from '../bench-summary.js';
import type { QueryMigrateInfo } from '../../cli/migrate-command.js';
import type { MigrationRecord, MigrationSample } from '../migration-record.js';
import { derivePasses, estimateSwitchoverMs } from '../migration-record.js';

const PAGE = 4096;

function info(status: string, sync: number, normal: number, duplicate: number, remainingPages: number, extra: Partial<QueryMigrateInfo> = {}): QueryMigrateInfo {
  return {
    status,
    'setup-time': 2,
    ...extra,
    ram: {
      transferred: normal * (PAGE + 8) + duplicate * 9,
      remaining: remainingPages * PAGE,
      total: 65536 * PAGE,
      duplicate,
      normal,
      'normal-bytes': normal * PAGE,
      'dirty-pages-rate': sync > 1 ? 250_000 : 0,
      mbps: 8000,
      'dirty-sync-count': sync,
      'page-size': PAGE,
    },
  };
}

/**
 * Pass 1 sends 60 000 pages and 5 536 zero pages over 200 ms (samples at 50..200), pass
 * 2 sends 20 000 (250..300), pass 3 sends 4 000 (350); completed at 380 ms with 30 ms downtime.
 */
export function sampleSamples(): MigrationSample[] {
  return [
    { atMs: 50, info: info('active', 1, 15_000, 1_384, 49_152, { 'expected-downtime': 300 }) },
    { atMs: 100, info: info('active', 1, 30_000, 2_768, 32_768, { 'expected-downtime': 300 }) },
    { atMs: 150, info: info('active', 1, 45_000, 4_152, 16_384, { 'expected-downtime': 300 }) },
    { atMs: 200, info: info('active', 1, 60_000, 5_536, 1_000, { 'expected-downtime': 300 }) },
    { atMs: 250, info: info('active', 2, 70_000, 5_536, 20_000, { 'expected-downtime': 120 }) },
    { atMs: 300, info: info('active', 2, 80_000, 5_536, 200, { 'expected-downtime': 80 }) },
    { atMs: 350, info: info('active', 3, 84_000, 5_536, 4_000, { 'expected-downtime': 40 }) },
    { atMs: 400, info: info('completed', 3, 84_100, 5_536, 0, { 'total-time': 380, downtime: 30 }) },
  ];
}

export function sampleRecord(overrides: Partial<MigrationRecord> = {}): MigrationRecord {
  const samples = sampleSamples();
  const final = samples[samples.length - 1]!.info;
  return {
    title: 'Sample migration <256 MiB> & friends',
    peer: 'Ferry',
    accelerator: 'sim',
    uri: 'tcp:127.0.0.1:4444',
    memoryBytes: 256 * 1024 * 1024,
    downtimeLimitMs: 300,
    maxBandwidth: 2 ** 50,
    status: 'completed',
    samples,
    passEvents: [
      { pass: 1, atMs: 3 },
      { pass: 2, atMs: 205 },
      { pass: 3, atMs: 320 },
    ],
    passes: derivePasses(samples),
    passSource: 'samples',
    switchoverMs: estimateSwitchoverMs(final),
    final,
    notes: ['A made-up run for tests.'],
    ...overrides,
  };
}

/** Two cells, two reps each; Ferry does not converge in the second cell. */
export function sampleBenchResults(): BenchResults {
  const make = (memoryMiB: number, downtimeLimitMs: number): BenchCell => {
    const c = { memoryMiB, transport: 'tcp' as const, downtimeLimitMs, guest: 'sweep' as const };
    return { ...c, key: cellKey(c) };
  };
  const cells = [make(256, 300), make(256, 30)];
  const run = (side: 'ferry' | 'qemu', cell: BenchCell, rep: number, totalMs: number | undefined): BenchRun => {
    const base = { side, cellKey: cell.key, rep, accelerator: side === 'ferry' ? 'sim' : 'tcg', guestPagesPerSec: 250_000, dirtyPagesRate: 240_000 };
    if (totalMs === undefined) return { ...base, status: 'not-converged', passes: 40, bytes: 4e9, record: sampleRecord({ status: 'cancelled', cancelledAfterMs: 20_000 }) };
    const bytes = 300e6 + rep * 1e6;
    return { ...base, status: 'completed', totalMs, downtimeMs: 20 + rep, bytes, throughput: (bytes * 1000) / totalMs, passes: 3, destinationStatus: 'running', record: sampleRecord({ peer: side === 'ferry' ? 'Ferry' : 'QEMU 7.2.22' }) };
  };
  return {
    startedAt: '2026-11-27T15:00:00.000Z',
    finishedAt: '2026-11-27T15:05:00.000Z',
    command: 'npm run bench:vs-qemu -- --reps 2',
    host: { cpus: 2, cpuModel: 'test CPU', memoryBytes: 24 * 1024 ** 3, kernel: '6.1', node: 'v20', loadAverageAtStart: [1, 2, 3] },
    qemuVersion: 'QEMU 7.2.22',
    accelerators: { ferry: 'sim', qemu: 'tcg' },
    ferryRates: { '256 MiB': 250_000 },
    reps: 2,
    capMs: 20_000,
    ceilings: { tcpBytesPerSec: 3e9, unixBytesPerSec: 4e9, memcpyBytesPerSec: 2e10 },
    cells,
    runs: [
      run('qemu', cells[0]!, 0, 400), run('ferry', cells[0]!, 0, 300),
      run('ferry', cells[0]!, 1, 320), run('qemu', cells[0]!, 1, 500),
      run('qemu', cells[1]!, 0, 900), run('ferry', cells[1]!, 0, undefined),
      run('ferry', cells[1]!, 1, undefined), run('qemu', cells[1]!, 1, 1100),
    ].map((r, i) => (i === 6 ? { ...r, status: 'skipped' as const } : r)),
  };
}
