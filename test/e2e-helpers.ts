// Scaffolding shared by the tests that run real ferry processes: a scratch folder and
// VMs that are cleaned up with the test, polling helpers, and a migration held "active"
// by a bandwidth cap so a test can act on it mid-stream.

import type { TestContext } from 'node:test';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawn } from 'node:child_process';
import { FERRY_MAIN, FerryProcess, type FerryProcessOptions } from '../src/cli/ferry-process.js';

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export interface MigrateInfo { status: string; 'error-desc'?: string; ram?: { 'dirty-sync-count': number; transferred: number } }

/** A temporary folder removed after the test. */
export function scratch(t: TestContext, prefix = 'ferry-test-'): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** How long a ferry process may take to open its QMP socket: FERRY_TEST_START_TIMEOUT_MS where set (the nested KVM host sets a minute), else FerryProcess's own. */
function startTimeout(): { startTimeoutMs?: number } {
  const ms = Number(process.env['FERRY_TEST_START_TIMEOUT_MS']);
  return Number.isFinite(ms) && ms > 0 ? { startTimeoutMs: ms } : {};
}

/** `ferry run ARGS` with a QMP socket in `dir`, quit after the test. */
export async function started(
  t: TestContext, dir: string, name: string, args: string[], env?: Record<string, string>,
  options?: Pick<FerryProcessOptions, 'nodeArgs' | 'captureStdout'>,
): Promise<FerryProcess> {
  const vm = await FerryProcess.start({ dir, name, args, ...(env ? { env } : {}), ...startTimeout(), ...options });
  t.after(() => vm.quit());
  return vm;
}

export async function waitFor(cond: () => Promise<boolean>, what: string, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(25);
  }
}

export async function waitMigration(vm: FerryProcess, done: (info: MigrateInfo) => boolean, timeoutMs = 20_000): Promise<MigrateInfo> {
  let info: MigrateInfo = { status: 'unknown' };
  await waitFor(async () => done((info = await vm.execute<MigrateInfo>('query-migrate'))), `the migration (still ${info.status})`, timeoutMs);
  return info;
}

/** Start a migration capped at 4 MiB/s and wait until over 1 MiB went: it is active now and will be for a while. */
export async function migrateSlowly(source: FerryProcess, uri: string): Promise<void> {
  await source.execute('migrate-set-parameters', { 'max-bandwidth': 4 * 1024 * 1024 });
  await source.execute('migrate', { uri });
  await waitMigration(source, (i) => i.status === 'active' && (i.ram?.transferred ?? 0) > 1024 * 1024);
}

/** Run `ferry ARGS` to the end, collecting its output (for commands that take a while, e.g. `demo`). */
export function runFerry(args: readonly string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [FERRY_MAIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (s: string) => (stdout += s));
    child.stderr.setEncoding('utf8').on('data', (s: string) => (stderr += s));
    child.once('exit', (code) => resolve({ code, stdout, stderr }));
  });
}
