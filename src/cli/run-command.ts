// `ferry run`: builds the VM from the command line, serves QMP, optionally waits for an
// incoming migration, and lives until `quit`, a guest shutdown or a signal.

import { debuglog } from 'node:util';
import { setFlagsFromString } from 'node:v8';
import { openCharBackend } from '../chardev/char-backend.js';
import { ConfigError, errorMessage, FerryError } from '../errors.js';
import { parseGuestSpec } from '../guests/spec.js';
import { uuidOption } from '../uuid.js';
import { exitImmediately } from '../sys/libc.js';
import type { AccelKind } from '../hypervisor/types.js';
import type { Vmm, VmmOptions } from '../vmm/vmm.js';
import type { MemoryBackend, ObjectRegistry } from '../vmm/objects.js';

const trace = debuglog('ferry');

export interface RunCommandOptions {
  /** -m; 128 MiB, or the memory backend's size, when absent. */
  memory?: number;
  accel?: AccelKind;
  guest: string;
  kernel?: string;
  initrd?: string;
  append?: string;
  smp: number;
  qmp: string[];
  serial: string;
  S?: boolean;
  name?: string;
  uuid?: string;
  incoming?: string;
  memPrealloc?: boolean;
  /** commander's `--no-warm-up`: false turns the migration warm-up off. */
  warmUp?: boolean;
  /** QEMU's -object specs (tls-creds-x509). */
  object?: string[];
  /** QEMU's -machine properties: memory-backend=ID. */
  machine?: string;
}

/** -m when neither it nor a memory backend says otherwise (QEMU's default). */
const DEFAULT_MEMORY = 128 * 1024 * 1024;

/** The warm-up waits this long after start-up, so the guest's first output and QMP come first. */
const WARM_UP_DELAY_MS = 100;

export async function runCommand(opts: RunCommandOptions): Promise<void> {
  const objects = await checkObjects(opts.object ?? []);
  const backend = await memoryBackendOf(opts.machine, objects);
  const memory = memorySizeOf(opts.memory, backend);
  if (memory % 4096 !== 0 || memory < 2 * 1024 * 1024) {
    throw new ConfigError(`Invalid memory size ${memory} bytes: it must be a multiple of 4 KiB and at least 2 MiB`);
  }
  if (opts.accel !== 'v86' && (opts.kernel !== undefined || opts.initrd !== undefined || opts.append !== undefined)) {
    throw new ConfigError('--kernel, --initrd and --append boot Linux, which needs --accel v86 here');
  }
  const guest = parseGuestSpec(opts.guest);
  if (opts.uuid !== undefined) uuidOption(opts.uuid);
  const console = await openCharBackend(opts.serial);
  let vmm: Vmm | undefined;
  let ending = false;
  const end = async (code: number, message?: string): Promise<void> => {
    if (ending) return;
    ending = true;
    if (message) process.stderr.write(`ferry: ${message}\n`);
    if (vmm?.migration.ramArriving) {
      // A post-copy destination whose guest RAM is not all here: a vCPU asleep on a missing
      // page cannot be stopped, and Node's own exit would wait for it for ever.
      exitImmediately(code);
    }
    await vmm?.destroy().catch(() => {});
    await console.close().catch(() => {});
    process.exit(code);
  };

  try {
    const options: VmmOptions = {
      accel: opts.accel ?? 'auto',
      memorySize: memory,
      vcpus: opts.smp,
      guest,
      ...(opts.kernel !== undefined ? { kernel: opts.kernel } : {}),
      ...(opts.initrd !== undefined ? { initrd: opts.initrd } : {}),
      ...(opts.append !== undefined ? { append: opts.append } : {}),
      ...(console.kind !== 'none' ? { console } : {}),
      startPaused: Boolean(opts.S),
      incoming: opts.incoming !== undefined,
      memPrealloc: Boolean(opts.memPrealloc) || backend?.prealloc === true,
      ...(backend !== undefined ? { memoryBackend: { id: backend.id, ...(backend.memPath !== undefined ? { path: backend.memPath } : {}), share: backend.share } } : {}),
      notice: (message) => process.stderr.write(`ferry: ${message}\n`),
      qmp: opts.qmp,
      ...(opts.name !== undefined ? { name: opts.name } : {}),
      ...(opts.uuid !== undefined ? { uuid: opts.uuid } : {}),
      ...(opts.object !== undefined && opts.object.length > 0 ? { objects: opts.object } : {}),
      onQuit: (code) => void end(code),
    };
    // The machine first, and the guest running, before the QMP and migration modules load:
    // those are most of Ferry's code, and the guest does not need them to start.
    const { Machine } = await import('../machine/machine.js');
    const machine = await Machine.create(options);
    try {
      const { Vmm } = await import('../vmm/vmm.js');
      vmm = await Vmm.create(options, machine);
    } catch (err) {
      await machine.destroy().catch(() => {});
      throw err;
    }
  } catch (err) {
    await console.close().catch(() => {});
    throw err;
  }
  const { machine, migration } = vmm;
  console.onInput((bytes) => machine.consoleInput(bytes));

  const onShutdown = (reason: string): void => void end(0, reason === 'guest-shutdown' ? undefined : `guest shut down (${reason})`);
  const onCrash = (err: Error): void => {
    const dump = err instanceof FerryError && 'registerDump' in err ? `\n${String((err as { registerDump: string }).registerDump)}` : '';
    const detail = process.argv.includes('--debug') ? dump : '';
    void end(1, `${errorMessage(err)} — the guest cannot continue; check the guest image (run with --debug for the register dump)${detail}`);
  };
  machine.on('shutdown', ({ reason }) => onShutdown(reason));
  machine.on('crash', onCrash);
  // The guest runs while QMP and migration load: it may have stopped on its own already.
  if (machine.runState === 'internal-error' && machine.lastCrash) onCrash(machine.lastCrash);
  else if (machine.runState === 'shutdown') onShutdown('guest-shutdown');
  migration.onStatus((status, side) => {
    if (side === 'incoming' && status === 'failed') {
      // As QEMU: a destination whose incoming migration failed has no guest to run.
      void end(1, `incoming migration failed: ${migration.incomingError ?? 'unknown error'}`);
    }
  });
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.on(signal, () => void end(signal === 'SIGINT' ? 130 : 143));
  }

  if (opts.incoming !== undefined && opts.incoming !== 'defer') {
    let address: string;
    try {
      ({ address } = await migration.migrateIncoming(opts.incoming));
    } catch (err) {
      // The failed status has ended the run already, with this error as its one message.
      if (ending) return;
      throw err;
    }
    process.stderr.write(`ferry: waiting for an incoming migration on ${address}\n`);
  }
  serveWarmUp(vmm, opts.warmUp !== false);
}

/** What x-ferry-query-warm-up answers. */
interface WarmUpStatus {
  /**
   * off (--no-warm-up), scheduled, running, completed, skipped (a real migration began
   * first) or failed (its error, for the trace; the first migration is then only slower).
   */
  status: 'off' | 'scheduled' | 'running' | 'completed' | 'skipped' | 'failed';
  /** Scratch migrations completed (fewer than planned when a real one began meanwhile). */
  rounds?: number;
  'total-ms'?: number;
  error?: string;
}

/**
 * Compile the migration code now rather than during the first migration (src/vmm/warm-up.ts),
 * unless a real migration begins first; x-ferry-query-warm-up says how far it got. V8 would
 * otherwise throw compiled code away again once it has not run through a few full garbage
 * collections (bytecode flushing): a VM may run for days before it migrates, so this
 * process keeps what it compiled.
 */
function serveWarmUp(vmm: Vmm, enabled: boolean): void {
  const { migration, machine, qmp } = vmm;
  let state: WarmUpStatus = { status: enabled ? 'scheduled' : 'off' };
  qmp.register({ name: 'x-ferry-query-warm-up', handler: () => ({ ...state }) });
  if (!enabled) return;
  const idle = (): boolean => migration.status === 'none' && (migration.incomingStatus === 'none' || migration.incomingStatus === 'setup');
  let rounds = 0;
  let totalMs = 0;
  // One warm-up at a time: the usual rounds after start, multifd's once it is turned on.
  let queue: Promise<void> = new Promise((resolve) => setTimeout(resolve, WARM_UP_DELAY_MS).unref());
  const warmUp = (multifd: boolean): void => {
    queue = queue.then(async () => {
      if (!idle()) {
        if (state.status === 'scheduled') state = { status: 'skipped', rounds: 0 };
        return;
      }
      state = { status: 'running' };
      setFlagsFromString('--no-flush-bytecode');
      const { warmUpMigration } = await import('../vmm/warm-up.js');
      const outcome = await warmUpMigration(machine.machineType, { keepGoing: idle, sections: machine.stateSections, multifd });
      if (outcome instanceof Error) {
        state = { status: 'failed', error: outcome.message };
        trace('warm-up: failed: %s', outcome.message);
      } else {
        rounds += outcome.rounds;
        totalMs += outcome.milliseconds;
        state = { status: 'completed', rounds, 'total-ms': Math.round(totalMs) };
        trace('warm-up: %d scratch migrations%s in %s ms', outcome.rounds, multifd ? ' with multifd' : '', outcome.milliseconds.toFixed(0));
      }
    });
  };
  warmUp(false);
  let multifdWarm = false;
  migration.onCapabilities((capabilities) => {
    if (!capabilities.multifd || multifdWarm) return;
    multifdWarm = true;
    warmUp(true);
  });
}

/** Each -object made once here, before the guest starts, so that a bad one changes nothing. */
async function checkObjects(specs: readonly string[]): Promise<ObjectRegistry | undefined> {
  if (specs.length === 0) return undefined;
  const { ObjectRegistry, parseObjectOption } = await import('../vmm/objects.js');
  const check = new ObjectRegistry();
  for (const spec of specs) {
    const { type, id, props } = parseObjectOption(spec);
    check.add(type, id, props);
  }
  return check;
}

/** --machine: the memory backend memory-backend=ID names (QEMU's -machine memory-backend), checked. */
async function memoryBackendOf(machine: string | undefined, objects: ObjectRegistry | undefined): Promise<MemoryBackend | undefined> {
  if (machine === undefined) return undefined;
  const { isMemoryBackend } = await import('../vmm/objects.js');
  let id: string | undefined;
  for (const part of machine.split(',')) {
    const eq = part.indexOf('=');
    const key = eq < 0 ? part : part.slice(0, eq);
    if (key !== 'memory-backend' || eq < 0) throw new ConfigError(`Invalid --machine "${machine}": Ferry's machine takes memory-backend=ID, not "${part}"`);
    id = part.slice(eq + 1);
  }
  const object = id === undefined ? undefined : objects?.get(id);
  if (!isMemoryBackend(object)) throw new ConfigError(`Memory backend '${id ?? ''}' not found`);
  return object;
}

/** -m, or the backend's size: they must agree when both are given (QEMU's check). */
function memorySizeOf(memory: number | undefined, backend: MemoryBackend | undefined): number {
  if (backend === undefined) return memory ?? DEFAULT_MEMORY;
  if (memory !== undefined && memory !== backend.size) throw new ConfigError('Machine memory size does not match the size of the memory backend');
  return backend.size;
}
