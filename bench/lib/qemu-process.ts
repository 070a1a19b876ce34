// Starts qemu-system-x86_64 as a migration source or destination for the benchmark and
// connects Ferry's QmpClient to it, so QEMU is driven exactly as a Ferry process is.
// Also: is QEMU installed, and which accelerator it can use on this host.

import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { copyFileSync, openSync, closeSync, constants } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { QmpClient } from '../../src/qmp/client.js';
import { connectWhenListening } from '../../src/cli/ferry-process.js';

export const QEMU_BINARY = 'qemu-system-x86_64';
/** The machine type both sides use (QEMU 7.2's default for x86_64, named so a change of default cannot split them). */
export const QEMU_MACHINE = 'pc';
export const SWEEP_BOOTSECTOR = fileURLToPath(new URL('../../guests/sweep-bootsector.bin', import.meta.url));

/** `QEMU emulator version 7.2.22 (…)`'s first line, or undefined when QEMU is not installed. */
export function qemuVersion(): string | undefined {
  const result = spawnSync(QEMU_BINARY, ['--version'], { encoding: 'utf8' });
  if (result.error || result.status !== 0) return undefined;
  return result.stdout.split('\n')[0]?.trim();
}

/** kvm where /dev/kvm opens read-write (what QEMU needs), else tcg. */
export function chooseQemuAccel(): 'kvm' | 'tcg' {
  try {
    closeSync(openSync('/dev/kvm', constants.O_RDWR));
    return 'kvm';
  } catch {
    return 'tcg';
  }
}

export type QemuGuest = 'sweep' | 'idle';

export interface QemuProcessOptions {
  readonly dir: string;
  readonly name: string;
  readonly memoryMiB: number;
  readonly accel: 'kvm' | 'tcg';
  readonly guest: QemuGuest;
  /** `tcp:127.0.0.1:PORT`, `unix:PATH`, … for a destination. */
  readonly incoming?: string;
  readonly startTimeoutMs?: number;
}

export class QemuProcess {
  readonly child: ChildProcess;
  readonly qmpPath: string;
  qmp!: QmpClient;
  stderr = '';
  readonly #exited: Promise<number | null>;

  private constructor(child: ChildProcess, qmpPath: string) {
    this.child = child;
    this.qmpPath = qmpPath;
    child.stderr?.setEncoding('utf8');
    child.stderr?.on('data', (text: string) => {
      this.stderr += text;
    });
    this.#exited = new Promise((resolve) => child.once('exit', (code) => resolve(code)));
  }

  static async start(options: QemuProcessOptions): Promise<QemuProcess> {
    const qmpPath = join(options.dir, `${options.name}.qmp`);
    const args = [
      '-machine', QEMU_MACHINE, '-accel', options.accel, '-m', String(options.memoryMiB),
      '-display', 'none', '-nodefaults', '-no-user-config', '-serial', 'none',
      '-qmp', `unix:${qmpPath},server=on,wait=off`,
    ];
    if (options.guest === 'sweep') {
      // Each process gets its own copy: two QEMUs opening one image read-write clash on
      // its lock, and ide-hd refuses a read-only drive. Source and destination still have
      // the same devices, which migration requires.
      const image = join(options.dir, `${options.name}-bootsector.bin`);
      copyFileSync(SWEEP_BOOTSECTOR, image);
      args.push('-drive', `file=${image},format=raw,if=ide`);
    }
    if (options.incoming !== undefined) args.push('-incoming', options.incoming);
    const child = spawn(QEMU_BINARY, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    const vm = new QemuProcess(child, qmpPath);
    vm.qmp = await connectWhenListening(child, qmpPath, `${QEMU_BINARY} (${options.name})`, options.startTimeoutMs ?? 15_000, () => vm.stderr);
    return vm;
  }

  /** The sweep guest's pass counter: the u32 at 1 MiB, which it increments once per pass (read over HMP `xp`). */
  async sweepCounter(): Promise<number> {
    const text = await this.qmp.execute<string>('human-monitor-command', { 'command-line': 'xp /1wx 0x100000' });
    const match = /:\s*0x([0-9a-f]+)/i.exec(text);
    if (!match) throw new Error(`Cannot read the sweep counter from QEMU: unexpected xp output ${JSON.stringify(text)}`);
    return Number.parseInt(match[1]!, 16);
  }

  get exited(): Promise<number | null> {
    return this.#exited;
  }

  /** QMP quit, then SIGKILL if it lingers. */
  async quit(): Promise<void> {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      try {
        await this.qmp.execute('quit', undefined, { timeoutMs: 2000 });
      } catch {
        // QEMU may drop the connection as it exits, before replying.
      }
      const timer = setTimeout(() => this.child.kill('SIGKILL'), 3000);
      await this.#exited;
      clearTimeout(timer);
    }
    await this.qmp?.close().catch(() => {});
  }
}
