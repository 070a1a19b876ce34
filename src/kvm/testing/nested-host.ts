// Real KVM on a machine without /dev/kvm: QEMU boots the KVM host that
// scripts/setup-kvm-host.sh builds (Debian's amd64 kernel under TCG with `-cpu max`, whose
// emulated AMD SVM lets kvm-amd load) and runs a shell script in it. The guest sees this
// machine's root file system read-only and the project read-write, both over 9p at
// their own paths, so it runs the project's own build with this machine's node. The
// script's path goes in on the kernel command line; its exit status comes back in a
// file beside it, written by the KVM host's /init.

import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export interface NestedKvmHost {
  readonly kernel: string;
  readonly initramfs: string;
  /** The project folder, shared read-write with the KVM host at the same path. */
  readonly project: string;
}

export interface NestedRun {
  /** The script's exit status, or null if the KVM host never wrote one (it did not boot, or timed out). */
  readonly status: number | null;
  /** What the script printed (stdout and stderr). */
  readonly output: string;
  /** The KVM host's serial console: its kernel and /init messages. */
  readonly console: string;
  /** The run was stopped: its time ran out, or its kernel reported itself wedged (`wedged`). */
  readonly timedOut: boolean;
  /**
   * Why the run was stopped before its timeout: the KVM host's kernel reported a CPU
   * stuck for a minute or more (the line), or neither the console nor the script's output
   * grew for a while.
   */
  readonly wedged?: string;
  /** Where the console was kept, for a run that did not finish. */
  readonly consoleFile?: string;
}

/** The console's report of a CPU stuck for STUCK_SECONDS or more (the KVM host's kernel locked up), if any. */
export function wedgedLine(console: string): string | undefined {
  for (const match of console.matchAll(/^.*soft lockup - CPU#\d+ stuck for (\d+)s!.*$/gm)) {
    if (Number(match[1]) >= STUCK_SECONDS) return match[0].trim();
  }
  return undefined;
}

/** The KVM host built in `project`/.cache/kvm-host, or why it cannot be used here. */
export function nestedKvmHost(project: string): { ok: true; host: NestedKvmHost } | { ok: false; reason: string } {
  const dir = join(project, '.cache', 'kvm-host');
  const kernel = join(dir, 'vmlinuz');
  const initramfs = join(dir, 'initramfs.cpio.gz');
  if (!existsSync(kernel) || !existsSync(initramfs)) {
    return { ok: false, reason: `no KVM host in ${dir}: run scripts/setup-kvm-host.sh as root (.ci/run does)` };
  }
  if (spawnSync('qemu-system-x86_64', ['--version']).status !== 0) {
    return { ok: false, reason: 'qemu-system-x86_64 is not installed (Debian: qemu-system-x86)' };
  }
  // The kernel command line is split at spaces and the path is used unquoted by /init.
  if (/\s/.test(project)) return { ok: false, reason: `the project path "${project}" has white space, which the KVM host's command line cannot carry` };
  return { ok: true, host: { kernel, initramfs, project } };
}

let runs = 0;
/** A CPU of the KVM host stuck this long (its kernel's soft-lockup report) ends the run. */
const STUCK_SECONDS = 60;
/**
 * So does this long without a byte on the console or from the script. The tests run here
 * print a line as each one ends; the longest took 51 s in the KVM host (auto-converge, on
 * 2026-12-07, kvm-nested.test.ts's "time per test there"), so a hang costs 2 minutes.
 */
const SILENT_MS = 120_000;

/**
 * Boot the KVM host, run `script` (shell) in the project folder with /dev/kvm, power off.
 * Memory and vCPUs are the KVM host's own: its guests come out of them.
 */
export async function runInNestedHost(
  host: NestedKvmHost,
  script: string,
  options: { timeoutMs: number; memoryMiB?: number; cpus?: number; silentMs?: number },
): Promise<NestedRun> {
  const dir = join(host.project, '.cache', 'kvm-host', 'runs');
  mkdirSync(dir, { recursive: true });
  const base = join(dir, `run-${process.pid}-${++runs}`);
  const scriptPath = `${base}.sh`;
  const outputPath = `${base}.out`;
  const statusPath = `${scriptPath}.status`;
  rmSync(statusPath, { force: true });
  writeFileSync(scriptPath, `exec >'${outputPath}' 2>&1\n${script}\n`);
  const args = [
    '-accel', 'tcg', '-cpu', 'max', '-smp', String(options.cpus ?? 2), '-m', `${options.memoryMiB ?? 4096}M`,
    '-kernel', host.kernel, '-initrd', host.initramfs,
    // The watchdog dumps the KVM host's task states to the console shortly before the timeout.
    '-append', `console=ttyS0 quiet loglevel=4 ferry.cmd=${scriptPath} ferry.project=${host.project} ferry.watchdog=${Math.max(1, Math.floor(options.timeoutMs / 1000) - 15)}`,
    '-display', 'none', '-serial', 'stdio', '-monitor', 'none', '-no-reboot', '-nodefaults',
    '-virtfs', 'local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap',
    '-virtfs', `local,path=${host.project},mount_tag=project,security_model=none,multidevs=remap`,
  ];
  const qemu = spawn('qemu-system-x86_64', args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let consoleText = '';
  let wedged: string | undefined;
  const onConsole = (d: Buffer): void => {
    consoleText += d.toString();
    // Under TCG the KVM host's own kernel now and then locks up, every CPU at once (its
    // soft-lockup watchdog names kthreadd and the idle task): nothing runs again, the
    // script included. A CPU stuck for a minute means that, so the run stops there rather
    // than at its timeout, minutes later.
    if (wedged !== undefined) return;
    const line = wedgedLine(consoleText.slice(-4096));
    if (line === undefined) return;
    wedged = `its kernel reported "${line}"`;
    qemu.kill('SIGKILL');
  };
  qemu.stdout.on('data', onConsole);
  qemu.stderr.on('data', onConsole);
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    qemu.kill('SIGKILL');
  }, options.timeoutMs);
  // Other lock-ups leave the console silent too, watchdog and all: a run in which neither
  // the console nor the script's output grew for `silentMs` is stopped then.
  const silentMs = options.silentMs ?? SILENT_MS;
  let lastSize = -1;
  let lastChange = Date.now();
  const silence = setInterval(() => {
    const size = consoleText.length + (existsSync(outputPath) ? statSync(outputPath).size : 0);
    if (size !== lastSize) {
      lastSize = size;
      lastChange = Date.now();
    } else if (wedged === undefined && Date.now() - lastChange >= silentMs) {
      wedged = `nothing on its console or from the script for ${Math.round(silentMs / 1000)} s`;
      qemu.kill('SIGKILL');
    }
  }, 1000);
  await new Promise<void>((resolve) => qemu.on('close', () => resolve()));
  clearTimeout(timer);
  clearInterval(silence);
  const read = (path: string): string | undefined => (existsSync(path) ? readFileSync(path, 'utf8') : undefined);
  const statusText = read(statusPath)?.trim();
  const output = read(outputPath) ?? '';
  for (const path of [scriptPath, outputPath, statusPath]) rmSync(path, { force: true });
  const status = statusText !== undefined && /^\d+$/.test(statusText) ? Number(statusText) : null;
  // A run that never finished keeps its console (with the watchdog's task states) for a look.
  const consoleFile = status === null ? `${base}.console` : undefined;
  if (consoleFile) writeFileSync(consoleFile, consoleText);
  return { status, output, console: consoleText, timedOut: timedOut || wedged !== undefined, ...(wedged !== undefined ? { wedged } : {}), ...(consoleFile ? { consoleFile } : {}) };
}
