import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { QmpClient } from '../qmp/client.js';
import { pausesWithoutSwitchover } from '../report/guest-pause.js';
import { convergenceHint, formatSummary, runMigration, type QueryMigrateInfo } from './migrate-command.js';

/** A QMP peer that records commands and answers query-migrate from a script. */
function fakeClient(answers: QueryMigrateInfo[]) {
  const calls: Array<[string, unknown]> = [];
  const client = {
    execute: async (name: string, args?: unknown) => {
      calls.push([name, args]);
      if (name === 'query-migrate') return answers.length > 1 ? answers.shift() : answers[0];
      return {};
    },
  };
  return { client: client as unknown as QmpClient, calls };
}

const ram = (over: Partial<NonNullable<QueryMigrateInfo['ram']>> = {}): NonNullable<QueryMigrateInfo['ram']> => ({
  transferred: 100 * 1048576, remaining: 0, total: 256 * 1048576, duplicate: 10, normal: 25_000, 'normal-bytes': 25_000 * 4096,
  'dirty-pages-rate': 0, mbps: 8000, 'dirty-sync-count': 4, ...over,
});

test('runMigration sets parameters and the events capability, starts, polls to the end, and reports every sample', async () => {
  const { client, calls } = fakeClient([
    { status: 'setup' },
    { status: 'active', 'expected-downtime': 40, ram: ram({ remaining: 64 * 1048576, 'dirty-sync-count': 2 }) },
    // QEMU 7.2 may say completed before it has set total-time: the command asks again.
    { status: 'completed', 'total-time': 0, ram: ram() },
    { status: 'completed', 'total-time': 812, downtime: 37, 'setup-time': 9, ram: ram() },
  ]);
  const samples: string[] = [];
  const outcome = await runMigration(client, {
    qmp: 'unused', uri: 'tcp:127.0.0.1:4444', downtimeLimitMs: 50, maxBandwidth: 0, capabilities: ['xbzrle'], progress: false, pollMs: 1,
    onSample: (info) => samples.push(info.status ?? '?'),
  });
  assert.deepEqual(calls.slice(0, 3), [
    ['migrate-set-parameters', { 'downtime-limit': 50, 'max-bandwidth': 0 }],
    ['migrate-set-capabilities', { capabilities: [{ capability: 'events', state: true }, { capability: 'xbzrle', state: true }] }],
    ['migrate', { uri: 'tcp:127.0.0.1:4444' }],
  ]);
  assert.deepEqual(samples, ['setup', 'active', 'completed']);
  assert.equal(outcome.status, 'completed');
  assert.equal(outcome.info['total-time'], 812);
  assert.equal(outcome.passes, 4);
});

test('the summary names time, downtime, passes and bytes; a failure carries its error', () => {
  const done = formatSummary({ status: 'completed', passes: 4, peakThrottle: 0, info: { status: 'completed', 'total-time': 812, downtime: 37, 'setup-time': 9, ram: ram() } });
  assert.match(done, /^Migration completed/);
  assert.match(done, /total time\s+812 ms/);
  assert.match(done, /downtime\s+37 ms/);
  assert.match(done, /passes\s+4/);
  assert.match(done, /transferred\s+100\.0 MiB \(25000 pages sent whole, 10 zero pages\)/);
  assert.doesNotMatch(done, /throttle/);
  const throttled = formatSummary({ status: 'completed', passes: 9, peakThrottle: 60, info: { status: 'completed', 'total-time': 4100, downtime: 80, ram: ram() } });
  assert.match(throttled, /CPU throttle\s+up to 60 % \(auto-converge\)/);
  const failed = formatSummary({ status: 'failed', passes: 0, peakThrottle: 0, info: { status: 'failed', 'error-desc': 'Connection refused at tcp:127.0.0.1:1' } });
  assert.match(failed, /^Migration failed\n  error\s+Connection refused at tcp:127.0.0.1:1$/);
});

test('a migration that has not converged after a few passes is told so once, with the knobs that would help', async () => {
  const settings = { downtimeLimitMs: 300, maxBandwidth: 0, autoConverge: false };
  const active = (over: Partial<QueryMigrateInfo> = {}, r: Partial<NonNullable<QueryMigrateInfo['ram']>> = {}): QueryMigrateInfo => ({
    status: 'active', 'expected-downtime': 820, ram: ram({ remaining: 200 * 1048576, 'dirty-sync-count': 7, 'dirty-pages-rate': 250_000, mbps: 8000, ...r }), ...over,
  });
  // Nothing to say too early, in the first passes, or once what is left fits the limit.
  assert.equal(convergenceHint(active(), 4999, settings), undefined);
  assert.equal(convergenceHint(active({}, { 'dirty-sync-count': 2 }), 60_000, settings), undefined);
  assert.equal(convergenceHint(active({ 'expected-downtime': 300 }), 60_000, settings), undefined);
  assert.equal(convergenceHint(active({ status: 'completed' }), 60_000, settings), undefined);
  const hint = convergenceHint(active(), 6000, settings)!;
  assert.match(hint, /not converging yet after 7 passes in 6\.00 s/);
  assert.match(hint, /the 200\.0 MiB of its 256\.0 MiB of RAM still to send would take ~820 ms at 1\.00 GB\/s with the guest stopped; the downtime limit is 300 ms/);
  assert.match(hint, /--auto-converge .*a --downtime-limit above 820 ms/);
  assert.doesNotMatch(hint, /--max-bandwidth/);
  // Auto-converge already on is not suggested again; a bandwidth cap is named.
  const capped = convergenceHint(active(), 6000, { downtimeLimitMs: 300, maxBandwidth: 128 * 1048576, autoConverge: true })!;
  assert.doesNotMatch(capped, /--auto-converge/);
  assert.match(capped, /a --max-bandwidth above 134 MB\/s/);

  // runMigration writes it once, however many samples qualify, and reads the settings from the peer.
  const { client, calls } = fakeClient([active(), active(), active({}, { 'dirty-sync-count': 9 }), { status: 'cancelled', ram: ram() }]);
  const written: string[] = [];
  const out = { write: (text: string) => { written.push(text); return true; } } as unknown as NodeJS.WritableStream;
  const outcome = await runMigration(client, { qmp: 'unused', uri: 'tcp:127.0.0.1:4444', progress: false, pollMs: 1, hintAfterMs: 0, out });
  assert.equal(outcome.status, 'cancelled');
  assert.equal(written.length, 1);
  assert.match(written[0]!, /not converging yet after 7 passes/);
  assert.ok(calls.some(([name]) => name === 'query-migrate-parameters'));
  assert.ok(calls.some(([name]) => name === 'query-migrate-capabilities'));
});

test('the summary lists the pauses that did not end in the switchover, from the source\'s STOP and RESUME events', () => {
  const at = (ms: number) => ({ seconds: Math.floor(ms / 1000), microseconds: (ms % 1000) * 1000 });
  const source = {
    bufferedEvents: () => [
      { event: 'MIGRATION', data: { status: 'active' }, timestamp: at(1000) },
      { event: 'STOP', timestamp: at(2000) },
      { event: 'RESUME', timestamp: at(2053) }, // a switchover called off after 53 ms
      { event: 'STOP', timestamp: at(3000) }, // the switchover: no RESUME on the source
    ],
  } as unknown as QmpClient;
  const pauses = pausesWithoutSwitchover(source);
  assert.deepEqual(pauses, [53]);
  const outcome = { status: 'completed', passes: 6, peakThrottle: 0, info: { status: 'completed', 'total-time': 1200, downtime: 40, ram: ram() } };
  assert.match(formatSummary(outcome, undefined, pauses), /other pauses\s+1: 53\.0 ms \(the source stopped the guest and ran it again: a switchover called off/);
  assert.doesNotMatch(formatSummary(outcome), /other pauses/);
});
