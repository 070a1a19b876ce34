// The KVM tests on a machine without /dev/kvm: each test file that needs KVM runs inside
// the KVM host scripts/setup-kvm-host.sh builds (Linux KVM on QEMU's emulated AMD SVM,
// see src/kvm/testing/nested-host.ts), and must pass there with nothing skipped. Where
// /dev/kvm opens, those files ran directly and this one skips, saying so.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';
import { kvmAvailable } from '../src/hypervisor/kvm-accelerator.js';
import { nestedKvmHost, runInNestedHost, wedgedLine } from '../src/kvm/testing/nested-host.js';

const PROJECT = fileURLToPath(new URL('../..', import.meta.url)).replace(/\/$/, '');
const MATCH_SKIP = 'test name does not match pattern';

interface TapSummary { passed: string[]; failed: string[]; skipped: string[] }

/** The top-level results of a `node --test --test-reporter=tap` run. */
function topLevelResults(tap: string): TapSummary {
  const summary: TapSummary = { passed: [], failed: [], skipped: [] };
  for (const line of tap.split('\n')) {
    const m = /^(not ok|ok) \d+ - (.*?)(?: # (SKIP|TODO)\b ?(.*))?$/.exec(line);
    if (!m) continue;
    const [, result, name, directive, reason] = m;
    if (directive === 'SKIP') {
      if (reason !== MATCH_SKIP) summary.skipped.push(`${name} (${reason})`);
    } else if (result === 'ok') summary.passed.push(name!);
    else summary.failed.push(name!);
  }
  return summary;
}

/** "name 34.7 s" for each test that ran (not skipped), from a TAP report: where a run's time goes. */
function durations(tap: string): string[] {
  const out: string[] = [];
  let current: string | undefined;
  for (const line of tap.split('\n')) {
    const m = /^(?:not ok|ok) \d+ - (.*?)( # SKIP\b.*)?$/.exec(line);
    if (m) {
      current = m[2] === undefined ? m[1] : undefined;
      continue;
    }
    const d = /^ {2}duration_ms: ([\d.]+)/.exec(line);
    if (d && current !== undefined) {
      out.push(`${current}: ${(Number(d[1]) / 1000).toFixed(1)} s`);
      current = undefined;
    }
  }
  return out;
}

/**
 * The --test-name-pattern for a run after a hang: what `pattern` (a `^prefix`) matches but
 * the tests that passed already, so the second run does not do them again — a negative
 * lookahead before the prefix. Without a pattern, undefined: every test runs again (node
 * runs a test whose ancestor matches, and a bare lookahead matches the root's name).
 */
function patternWithout(pattern: string | undefined, passed: readonly string[]): string | undefined {
  if (pattern === undefined || passed.length === 0) return pattern;
  const names = passed.map((name) => name.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'));
  return `^(?!(?:${names.join('|')})$)${pattern.replace(/^\^/, '')}`;
}

/** `text` quoted for a POSIX shell. */
function shellQuote(text: string): string {
  return `'${text.replace(/'/g, `'\\''`)}'`;
}

test('after a hang, the second run leaves out what passed: a pattern that matches the rest only', () => {
  const pattern = patternWithout('^kvm: ', ['kvm: live migration over tcp', 'kvm: QEMU\'s tool (4 GiB + 64 MiB)']);
  assert.ok(pattern !== undefined);
  const re = new RegExp(pattern);
  assert.ok(!re.test('kvm: live migration over tcp'));
  assert.ok(!re.test('kvm: QEMU\'s tool (4 GiB + 64 MiB)'));
  assert.ok(re.test('kvm: live migration over tcp keeps the guest'), 'a longer name that begins the same is another test');
  assert.ok(re.test('kvm: exec: saves a snapshot'));
  assert.ok(!re.test('sim: exec: saves a snapshot'));
  assert.ok(!re.test('<root>'), 'no ancestor matches');
  assert.equal(patternWithout(undefined, ['boots']), undefined);
  assert.equal(patternWithout('^kvm: ', []), '^kvm: ');
  assert.equal(shellQuote("QEMU's"), `'QEMU'\\''s'`);
});

test('durations reads each top-level test\'s time from TAP, not a subtest\'s or a skipped one\'s', () => {
  const tap = [
    'ok 1 - sim: over tcp # SKIP test name does not match pattern',
    '  ---',
    '  duration_ms: 1.5',
    '  ...',
    '# Subtest: kvm: over tcp',
    '    ok 1 - inner',
    '      ---',
    '      duration_ms: 999',
    'ok 2 - kvm: over tcp',
    '  ---',
    '  duration_ms: 34660.97895',
    'not ok 3 - kvm: over unix',
    '  ---',
    '  duration_ms: 1200',
  ].join('\n');
  assert.deepEqual(durations(tap), ['kvm: over tcp: 34.7 s', 'kvm: over unix: 1.2 s']);
});

test('topLevelResults reads passes, failures and real skips, not subtests or pattern misses', () => {
  const tap = [
    'TAP version 13',
    'ok 1 - sim: over tcp # SKIP test name does not match pattern',
    '# Subtest: kvm: over tcp',
    '    ok 1 - inner',
    'ok 2 - kvm: over tcp',
    'not ok 3 - kvm: over unix',
    'ok 4 - kvm: exec # SKIP needs /dev/kvm: no',
    '# pass 1',
  ].join('\n');
  assert.deepEqual(topLevelResults(tap), { passed: ['kvm: over tcp'], failed: ['kvm: over unix'], skipped: ['kvm: exec (needs /dev/kvm: no)'] });
});

test('a KVM host whose kernel reports a CPU stuck for a minute is taken as hung; shorter stalls are not', () => {
  // From a real console (2026-12-06): the KVM host's kernel locked up under TCG.
  const console = [
    'ferry-kvm-host: running /tmp/ci-clone/.cache/kvm-host/runs/run-3893-1.sh',
    '[   39.724958] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:',
    '[   65.413180] watchdog: BUG: soft lockup - CPU#0 stuck for 44s! [kthreadd:2]',
    '[   65.521005] watchdog: BUG: soft lockup - CPU#1 stuck for 45s! [swapper/1:0]',
  ];
  assert.equal(wedgedLine(console.join('\n')), undefined);
  console.push('[   93.413053] watchdog: BUG: soft lockup - CPU#0 stuck for 70s! [kthreadd:2]');
  assert.equal(wedgedLine(console.join('\n')), '[   93.413053] watchdog: BUG: soft lockup - CPU#0 stuck for 70s! [kthreadd:2]');
  assert.equal(wedgedLine('ferry-kvm-host: /dev/kvm is up\n'), undefined);
});

// timeoutMs: for the whole boot and run (here kvm-run takes ~30 s, the migrations ~2-3 min).
// A run that hangs is stopped then, and its output so far ends in the test it was in. (Not
// --test-timeout: node 20 applies it to the file as a whole as well.)
const FILES: Array<{ file: string; pattern?: string; atLeast: number; timeoutMs: number }> = [
  { file: 'dist/test/kvm-run.test.js', atLeast: 7, timeoutMs: 4 * 60_000 },
  // The migration files in one boot of the KVM host (a boot costs ~20 s there).
  { file: 'dist/test/migrate-e2e.test.js dist/test/postcopy-e2e.test.js dist/test/background-snapshot-e2e.test.js', pattern: '^kvm: ', atLeast: 10, timeoutMs: 8 * 60_000 },
];

for (const { file, pattern, atLeast, timeoutMs } of FILES) {
  test(`under KVM in the nested KVM host: ${file}${pattern ? ` (tests matching ${pattern})` : ''}`, { timeout: 2 * timeoutMs + 60_000 }, async (t) => {
    if (kvmAvailable().ok) {
      t.skip('this machine has /dev/kvm: the file ran directly');
      return;
    }
    const found = nestedKvmHost(PROJECT);
    if (!found.ok) {
      t.skip(found.reason);
      return;
    }
    // Inside the KVM host (an emulated machine) a ferry process takes seconds to start, and
    // once took more than the 15 s a test gives it to open its QMP socket (a fresh-clone run
    // here, while the other VM of the test ran its warm-up): give it a minute there.
    const script = (namePattern: string | undefined): string =>
      `test -c /dev/kvm || { echo "no /dev/kvm in the KVM host"; exit 97; }\nFERRY_TEST_START_TIMEOUT_MS=60000 node --test --test-force-exit --test-reporter=tap${namePattern === undefined ? '' : ` --test-name-pattern=${shellQuote(namePattern)}`} ${file}`;
    const tail = (text: string): string => text.split('\n').slice(-40).join('\n');
    // Now and then a run goes silent part-way and never finishes: the KVM host's kernel
    // locks up under TCG, every CPU at once (its console then reports kthreadd and the idle
    // task stuck, or nothing at all; runInNestedHost stops such a run after a minute of
    // stuck CPUs or 120 s of silence rather than at the timeout). A run that hangs is
    // tried once more — without the tests that passed before it hung, so that a hang costs
    // the CI run minutes less — and said so; a second hang, or any failure, fails the test.
    let run = await runInNestedHost(found.host, script(pattern), { timeoutMs });
    let before: TapSummary = { passed: [], failed: [], skipped: [] };
    if (run.timedOut) {
      const why = run.wedged ?? `stopped after ${timeoutMs / 1000} s`;
      before = topLevelResults(run.output);
      t.diagnostic(`the KVM host hung (${why}; console: ${run.consoleFile}); trying once more, without the ${before.passed.length} tests that passed. Its run so far:\n${tail(run.output)}`);
      run = await runInNestedHost(found.host, script(patternWithout(pattern, before.passed)), { timeoutMs });
    }
    // Each failed test's own report: its "not ok" line and the indented block after it.
    const failures = (tap: string): string => {
      const lines = tap.split('\n');
      const out: string[] = [];
      lines.forEach((line, i) => {
        if (!line.startsWith('not ok ')) return;
        out.push(line);
        for (let j = i + 1; j < lines.length && lines[j]!.startsWith(' '); j++) out.push(lines[j]!);
      });
      return out.slice(0, 120).join('\n');
    };
    assert.ok(!run.timedOut, `the KVM host hung twice, the second time ${run.wedged ?? `stopped after ${timeoutMs / 1000} s`} (console: ${run.consoleFile}); its run so far:\n${tail(run.output)}\nconsole:\n${tail(run.console)}`);
    assert.notEqual(run.status, null, `the KVM host did not report an exit status; console:\n${tail(run.console)}`);
    assert.notEqual(run.status, 97, `kvm-amd did not load in the KVM host; console:\n${tail(run.console)}`);
    const after = topLevelResults(run.output);
    const results: TapSummary = { passed: [...before.passed, ...after.passed], failed: [...before.failed, ...after.failed], skipped: [...before.skipped, ...after.skipped] };
    t.diagnostic(`in the KVM host: ${results.passed.length} passed, ${results.failed.length} failed, ${results.skipped.length} skipped${before.passed.length > 0 ? ` (${before.passed.length} of them before the hang)` : ''}`);
    t.diagnostic(`time per test there: ${durations(run.output).join('; ')}`);
    assert.deepEqual(results.failed, [], `failed under KVM:\n${failures(run.output)}`);
    assert.deepEqual(results.skipped, [], 'skipped under KVM');
    assert.ok(results.passed.length >= atLeast, `only ${results.passed.length} tests passed under KVM (expected ${atLeast} or more):\n${tail(run.output)}`);
    assert.equal(run.status, 0, `node --test exited ${run.status}:\n${tail(run.output)}`);
  });
}
