// Starts `ferry run` as a child process and connects to its QMP socket: what the demo,
// the benchmarks and the integration tests use to put two real VMs side by side.

import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { QmpClient } from '../qmp/client.js';

export const FERRY_MAIN = fileURLToPath(new URL('./main.js', import.meta.url));

export interface FerryProcessOptions {
  /** Folder for the QMP socket and console log. */
  readonly dir: string;
  /** A name for files and messages ("src", "dst"). */
  readonly name: string;
  /** Arguments after `ferry run` (the QMP socket and serial are added). */
  readonly args: readonly string[];
  /** Serial console spec; default file:<dir>/<name>.console. */
  readonly serial?: string;
  readonly startTimeoutMs?: number;
  /** Extra environment for the child (e.g. NODE_DEBUG=ferry for the engine's trace on stderr). */
  readonly env?: Readonly<Record<string, string>>;
  /** Arguments for node itself, before Ferry's entry point (e.g. `--import` of a test helper). */
  readonly nodeArgs?: readonly string[];
  /** Keep what the child writes on stdout in `stdout` (V8's traces go there); default ignored. */
  readonly captureStdout?: boolean;
}

export class FerryProcess {
  readonly child: ChildProcess;
  readonly qmpPath: string;
  readonly consolePath: string;
  qmp!: QmpClient;
  stderr = '';
  /** The child's stdout so far, when started with captureStdout. */
  stdout = '';
  private exitPromise: Promise<number | null>;

  private constructor(child: ChildProcess, qmpPath: string, consolePath: string) {
    this.child = child;
    this.qmpPath = qmpPath;
    this.consolePath = consolePath;
    child.stdout?.setEncoding('utf8');
    child.stdout?.on('data', (text: string) => {
      this.stdout += text;
    });
    child.stderr?.setEncoding('utf8');
    child.stderr?.on('data', (text: string) => {
      this.stderr += text;
    });
    this.exitPromise = new Promise((resolve) => child.once('exit', (code) => resolve(code)));
  }

  static async start(options: FerryProcessOptions): Promise<FerryProcess> {
    const qmpPath = join(options.dir, `${options.name}.qmp`);
    const consolePath = join(options.dir, `${options.name}.console`);
    const args = [...(options.nodeArgs ?? []), FERRY_MAIN, 'run', ...options.args, '--qmp', `unix:${qmpPath}`, '--serial', options.serial ?? `file:${consolePath}`];
    const child = spawn(process.execPath, args, {
      stdio: ['ignore', options.captureStdout ? 'pipe' : 'ignore', 'pipe'],
      ...(options.env ? { env: { ...process.env, ...options.env } } : {}),
    });
    const vm = new FerryProcess(child, qmpPath, consolePath);
    vm.qmp = await connectWhenListening(child, qmpPath, `ferry run (${options.name})`, options.startTimeoutMs ?? 15_000, () => vm.stderr);
    return vm;
  }

  /** The address a `--incoming tcp:HOST:0` destination really listens on (from its stderr). */
  async incomingAddress(timeoutMs = 10_000): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const match = /waiting for an incoming migration on (\S+)/.exec(this.stderr);
      if (match) return match[1]!;
      if (this.child.exitCode !== null || Date.now() > deadline) {
        throw new Error(`destination did not report its incoming address: ${this.stderr.trim()}`);
      }
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  execute<R = Record<string, unknown>>(command: string, args?: Record<string, unknown>): Promise<R> {
    return this.qmp.execute<R>(command, args);
  }

  get exited(): Promise<number | null> {
    return this.exitPromise;
  }

  /** QMP quit, then SIGKILL if it lingers. */
  async quit(): Promise<void> {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      try {
        await this.qmp.execute('quit');
      } catch {
        // Already going away.
      }
      const timer = setTimeout(() => this.child.kill('SIGKILL'), 3000);
      await this.exitPromise;
      clearTimeout(timer);
    }
    await this.qmp?.close().catch(() => {});
  }

  kill(): void {
    this.child.kill('SIGKILL');
  }
}

/**
 * Connect to the QMP socket of a VM process just spawned (Ferry or QEMU), waiting until it
 * listens: the socket file can exist a moment before the server accepts on it. Fails,
 * with the process's stderr, if it exits first or does not listen within `timeoutMs`
 * (then it is killed).
 */
export async function connectWhenListening(child: ChildProcess, qmpPath: string, what: string, timeoutMs: number, stderr: () => string): Promise<QmpClient> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`${what} exited with ${child.exitCode}: ${stderr().trim()}`);
    if (existsSync(qmpPath)) {
      try {
        return await QmpClient.connect(qmpPath);
      } catch {
        // Not accepting yet.
      }
    }
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`${what} did not open its QMP socket within ${timeoutMs} ms: ${stderr().trim()}`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
}
