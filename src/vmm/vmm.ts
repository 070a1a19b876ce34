// A running Ferry VM: the Machine, its QMP server and its migration engine, wired
// together. This is where QMP commands meet the subsystems that carry them out and
// where machine and migration events become QMP events.

import { createHash, type Hash } from 'node:crypto';
import { PAGE_SIZE, type GuestMemoryBlock } from '../hypervisor/types.js';
import { debuglog } from 'node:util';
import { ConfigError, QmpError, errorMessage } from '../errors.js';
import { Machine, type MachineOptions } from '../machine/machine.js';
import { DIRTY_RATE_MODES, DirtyRateMeter } from '../migration/dirty-rate.js';
import { Migration } from '../migration/migration.js';
import { isMigrationRunning } from '../migration/states.js';
import { DEFAULT_MIGRATION_PARAMETERS, MIGRATION_CAPABILITIES } from '../migration/parameters.js';
import type { CapabilityStatus } from '../migration/parameters.js';
import type { VmStateDescription, VmStateValue } from '../migration/vmstate-types.js';
import { QmpServer } from '../qmp/server.js';
import type { QmpCommandContext } from '../qmp/command.js';
import { runHmp } from './hmp.js';
import { engineNow, engineSchedule } from './engine-hooks.js';
import { t, type Fields, type Schema } from '../qmp/schema.js';
import { connect, listen, parseMigrationUri } from '../transport/index.js';
import { checkSweepCounters, readGuestParams } from '../guests/params.js';
import { formatUuid, NIL_UUID, uuidOption } from '../uuid.js';
import { formatRamBlocks } from './ramblock-info.js';
import { pmemsave } from './pmemsave.js';
import { ObjectRegistry, isMemoryBackend, parseObjectOption } from './objects.js';
import { memdevList } from './memdev.js';

const trace = debuglog('ferry');

/** x-ferry-ram-digest hashes a block this much at a time (hash.update() refuses 2 GiB or more). */
const DIGEST_PIECE = 1 << 30;
/** What a page the host never backed holds, 2 MiB of it. */
const ZEROS = new Uint8Array(2 << 20);

/**
 * Hash a block's bytes. Pages the host never backed read as zero: they are hashed from a
 * buffer of zeros rather than read, which would fault each in (~0.3 GB/s here, where the
 * hash runs at ~1.5 GB/s) — the same digest, in a fifth of the time for a large idle guest.
 */
function hashBlock(hash: Hash, block: GuestMemoryBlock): void {
  const residency = block.residency?.();
  const pages = block.size / PAGE_SIZE;
  const piecePages = DIGEST_PIECE / PAGE_SIZE;
  for (let page = 0; page < pages;) {
    const backed = residency === undefined || (residency[page]! & 1) === 1;
    let end = page + 1;
    while (end < pages && end - page < piecePages && (residency === undefined || (residency[end]! & 1) === (backed ? 1 : 0))) end++;
    if (backed) {
      hash.update(block.bytes.subarray(page * PAGE_SIZE, end * PAGE_SIZE));
    } else {
      for (let at = page * PAGE_SIZE; at < end * PAGE_SIZE; at += ZEROS.length) hash.update(ZEROS.subarray(0, Math.min(ZEROS.length, end * PAGE_SIZE - at)));
    }
    page = end;
  }
}

export interface VmmOptions extends MachineOptions {
  readonly name?: string;
  /** QEMU's -uuid: query-uuid reports it, and validate-uuid migrations check it. */
  readonly uuid?: string;
  /** QMP addresses to listen on. */
  readonly qmp?: readonly string[];
  /** Called when the VM should end (QMP quit, guest shutdown) with the exit code. */
  readonly onQuit?: (code: number) => void;
  /** QEMU's -object: objects to make before anything else (e.g. "tls-creds-x509,id=tls0,dir=/etc/pki/qemu,endpoint=server"). */
  readonly objects?: readonly string[];
}

export class Vmm {
  readonly machine: Machine;
  readonly qmp: QmpServer;
  readonly migration: Migration;
  /** calc-dirty-rate / query-dirty-rate. */
  readonly dirtyRate: DirtyRateMeter;
  readonly name: string | undefined;
  readonly uuid: Uint8Array | undefined;
  /** What -object and object-add made (tls-creds-x509 for `tls-creds`). */
  readonly objects = new ObjectRegistry();
  private readonly onQuit: (code: number) => void;
  /** The memory backend guest RAM was taken from (-machine memory-backend=ID): in use for the VM's life. */
  readonly #memoryBackendId: string | undefined;
  /** What query-memdev says of guest RAM. */
  readonly #ram: { size: number; prealloc: boolean; backend?: { id: string; share: boolean } };

  private constructor(machine: Machine, options: VmmOptions, uuid: Uint8Array | undefined) {
    this.machine = machine;
    this.#memoryBackendId = options.memoryBackend?.id;
    const backend = options.memoryBackend;
    this.#ram = { size: machine.memorySize, prealloc: options.memPrealloc ?? false, ...(backend ? { backend: { id: backend.id, share: backend.share } } : {}) };
    this.name = options.name;
    this.uuid = uuid;
    this.onQuit = options.onQuit ?? (() => {});
    this.qmp = new QmpServer();
    const resolveFdName = (name: string): number => this.qmp.fds.take(name);
    this.migration = new Migration({
      vm: machine,
      connect: (uri, options) => connect(uri, { resolveFdName, ...options }),
      listen: (uri, options) => listen(uri, { resolveFdName, ...options }),
      now: engineNow,
      emit: (event, data) => this.qmp.emit(event, data),
      schedule: engineSchedule,
      trace: (message) => trace('%s', message),
      ...(uuid !== undefined ? { uuid } : {}),
      findObject: (id) => this.objects.get(id),
    });
    this.dirtyRate = new DirtyRateMeter({
      memory: () => machine.memory,
      dirtyLog: machine.dirtyLog,
      dirtyLogBusy: () => (isMigrationRunning(this.migration.queryMigrate().status ?? 'none') ? 'a migration is running (it holds the dirty log)' : undefined),
      now: () => performance.now(),
      // As QEMU's start-time: seconds on the host's monotonic clock (since boot on Linux).
      clockSeconds: () => Number(process.hrtime.bigint() / 1_000_000_000n),
      // Unreferenced: a measurement in progress does not keep an ending process alive.
      sleep: (ms) => new Promise((resolve) => setTimeout(resolve, ms).unref()),
      onError: (err) => trace('dirty rate: the measurement failed: %s', errorMessage(err)),
    });
    machine.on('stop', () => this.qmp.emit('STOP'));
    machine.on('resume', () => this.qmp.emit('RESUME'));
    machine.on('shutdown', ({ guest, reason }) => this.qmp.emit('SHUTDOWN', { guest, reason }));
    this.registerVmCommands();
    this.registerMigrationCommands();
    this.registerFerryCommands();
  }

  /** Create the machine (or take one already created from the same options) and serve QMP. */
  static async create(options: VmmOptions, created?: Machine): Promise<Vmm> {
    const uuid = options.uuid === undefined ? undefined : uuidOption(options.uuid);
    const objects = (options.objects ?? []).map(parseObjectOption);
    const machine = created ?? (await Machine.create(options));
    const vmm = new Vmm(machine, options, uuid);
    try {
      for (const { type, id, props } of objects) vmm.objects.add(type, id, props);
      for (const address of options.qmp ?? []) await vmm.qmp.listen(stripQemuServerOptions(address));
    } catch (err) {
      await vmm.destroy();
      throw err;
    }
    return vmm;
  }

  async destroy(): Promise<void> {
    await this.migration.close().catch(() => {});
    await this.qmp.close();
    await this.machine.destroy();
  }

  private registerVmCommands(): void {
    const { qmp, machine } = this;
    qmp.register({
      name: 'query-status',
      handler: () => ({ status: machine.runState, running: machine.isRunning, singlestep: false }),
    });
    qmp.register({ name: 'stop', handler: () => machine.stop() });
    qmp.register({
      name: 'cont',
      handler: () => {
        try {
          machine.cont();
        } catch (err) {
          throw new QmpError('GenericError', (err as Error).message, { cause: err });
        }
      },
    });
    qmp.register({
      name: 'quit',
      handler: (_args, ctx) => {
        ctx.afterReply(() => {
          qmp.emit('SHUTDOWN', { guest: false, reason: 'host-qmp-quit' });
          this.onQuit(0);
        });
      },
    });
    qmp.register({
      name: 'query-kvm',
      handler: () => ({ enabled: machine.accelKind === 'kvm', present: machine.accelKind === 'kvm' }),
    });
    qmp.register({ name: 'query-name', handler: () => (this.name !== undefined ? { name: this.name } : {}) });
    qmp.register({ name: 'query-uuid', handler: () => ({ UUID: formatUuid(this.uuid ?? NIL_UUID) }) });
    qmp.register({
      name: 'query-memdev',
      handler: () => memdevList(this.#ram, this.objects.list().map(({ id }) => this.objects.get(id)).filter(isMemoryBackend)),
    });
    qmp.register({ name: 'x-query-ramblock', handler: () => ({ 'human-readable-text': formatRamBlocks(this.machine.memory) }) });
    qmp.register({
      name: 'human-monitor-command',
      args: { 'command-line': t.str, 'cpu-index?': t.int },
      handler: (args, ctx) => this.hmp(args['command-line'], ctx),
    });
  }

  private registerMigrationCommands(): void {
    const { qmp, migration } = this;
    const wrap = <T>(fn: () => T): T => {
      try {
        return fn();
      } catch (err) {
        if (err instanceof QmpError) throw err;
        throw new QmpError('GenericError', (err as Error).message, { cause: err });
      }
    };
    const wrapAsync = async (fn: () => Promise<unknown>): Promise<void> => {
      try {
        await fn();
      } catch (err) {
        throw new QmpError('GenericError', (err as Error).message, { cause: err });
      }
    };
    qmp.register({
      name: 'migrate',
      args: { uri: t.str, 'blk?': t.bool, 'inc?': t.bool, 'detach?': t.bool, 'resume?': t.bool },
      handler: (args) => {
        if (args.blk || args.inc) throw new QmpError('GenericError', 'Block migration is not supported by Ferry (it has no block devices)');
        // A URI that names no transport is refused at once and changes nothing (QEMU also refuses it here).
        wrap(() => parseMigrationUri(args.uri));
        if (this.dirtyRate.holdsDirtyLog) {
          throw new QmpError('GenericError', 'Cannot start a migration while calc-dirty-rate measures with the dirty bitmap (it holds the dirty log): query-dirty-rate says when it is done');
        }
        wrap(() => migration.migrate(args.uri, { resume: args.resume === true }));
      },
    });
    qmp.register({ name: 'migrate-pause', handler: () => wrap(() => migration.pause()) });
    qmp.register({
      name: 'migrate-recover',
      args: { uri: t.str },
      handler: (args) => wrapAsync(() => migration.recover(args.uri)),
    });
    qmp.register({
      name: 'migrate-incoming',
      args: { uri: t.str },
      handler: (args) => wrapAsync(() => migration.migrateIncoming(args.uri)),
    });
    qmp.register({ name: 'migrate_cancel', handler: () => wrap(() => migration.cancel()) });
    qmp.register({ name: 'query-migrate', handler: () => migration.queryMigrate() as unknown as Record<string, unknown> });
    qmp.register({
      name: 'migrate-set-capabilities',
      args: { capabilities: t.array(t.object({ capability: t.enum(MIGRATION_CAPABILITIES), state: t.bool })) },
      handler: (args) => wrap(() => migration.setCapabilities(args.capabilities as CapabilityStatus[])),
    });
    qmp.register({
      name: 'x-ferry-query-migrate-passes',
      handler: () => JSON.parse(JSON.stringify(migration.queryPasses())) as Record<string, unknown>,
    });
    qmp.register({ name: 'query-migrate-capabilities', handler: () => migration.queryCapabilities() });
    qmp.register({
      name: 'migrate-set-parameters',
      args: parameterSchema(),
      handler: (args) => wrap(() => migration.setParameters(args as Record<string, unknown>)),
    });
    qmp.register({ name: 'query-migrate-parameters', handler: () => migration.queryParameters() as unknown as Record<string, unknown> });
    qmp.register({
      name: 'migrate-continue',
      args: { state: t.str },
      handler: (args) => wrap(() => migration.continue(args.state as string)),
    });
    qmp.register({
      name: 'calc-dirty-rate',
      args: { 'calc-time': t.int, 'sample-pages?': t.int, 'mode?': t.enum(DIRTY_RATE_MODES) },
      handler: (args) => {
        // Page sampling reads guest RAM from this thread.
        this.refuseWhileRamArrives();
        const request = {
          calcTime: args['calc-time'],
          ...(args['sample-pages'] !== undefined ? { samplePages: args['sample-pages'] } : {}),
          ...(args.mode !== undefined ? { mode: args.mode } : {}),
        };
        // It answers at once; query-dirty-rate reads the result once the period is over.
        void wrap(() => this.dirtyRate.start(request));
      },
    });
    qmp.register({ name: 'query-dirty-rate', handler: () => this.dirtyRate.query() as unknown as Record<string, unknown> });
    qmp.register({ name: 'migrate-start-postcopy', handler: () => wrap(() => migration.startPostcopy()) });
    // QEMU's ObjectOptions for the types Ferry makes: tls-creds-x509's, tls-creds-psk's,
    // authz-simple's and the memory backends' members.
    qmp.register({
      name: 'object-add',
      args: {
        'qom-type': t.str, id: t.str, 'dir?': t.str, 'endpoint?': t.str, 'verify-peer?': t.bool, 'sanity-check?': t.bool, 'passwordid?': t.str, 'loaded?': t.bool,
        'username?': t.str, 'identity?': t.str, 'size?': t.int, 'mem-path?': t.str, 'share?': t.bool, 'prealloc?': t.bool,
      },
      handler: (args) => {
        const { 'qom-type': type, id, ...props } = args;
        if (type.startsWith('memory-backend-')) {
          throw new QmpError('GenericError', `Ferry takes memory backends on the command line only (ferry run --object ${type},…): it has no memory hotplug to give one made now to the guest`);
        }
        wrap(() => this.objects.add(type, id, props));
      },
    });
    qmp.register({
      name: 'object-del',
      args: { id: t.str },
      handler: (args) => {
        if (args.id === this.#memoryBackendId) throw new QmpError('GenericError', `object '${args.id}' is in use, can not be deleted`);
        wrap(() => this.objects.delete(args.id));
      },
    });
  }

  /**
   * A post-copy destination's guest RAM is still arriving: a command that reads it from
   * this thread could touch a page not placed yet and stop the process for good.
   */
  private refuseWhileRamArrives(): void {
    if (this.migration.ramArriving) {
      throw new QmpError('GenericError', 'Guest RAM is still arriving (post-copy): this command reads it; try again once query-migrate says "completed"');
    }
  }

  /** Ferry's own commands (x-ferry-*, as QEMU prefixes its extensions): inspection for tests and people. */
  private registerFerryCommands(): void {
    const { qmp, machine } = this;
    // QEMU's pmemsave, here for the same reason: a look at guest memory from outside.
    qmp.register({
      name: 'pmemsave',
      args: { val: t.int, size: t.int, filename: t.str },
      handler: async (args) => {
        this.refuseWhileRamArrives();
        try {
          await pmemsave(machine.memory, args.val, args.size, args.filename);
        } catch (err) {
          throw new QmpError('GenericError', (err as Error).message);
        }
        return {};
      },
    });
    qmp.register({
      name: 'x-ferry-query-guest',
      handler: () => {
        this.refuseWhileRamArrives();
        const ram = machine.memory[0]?.bytes;
        const params = ram ? readGuestParams(ram) : undefined;
        const result: Record<string, unknown> = { accel: machine.accelKind, 'memory-size': machine.memorySize };
        if (params) {
          result['pass'] = params.pass;
          result['sweep-from'] = params.from;
          result['sweep-to'] = params.to;
        }
        return result;
      },
    });
    qmp.register({
      name: 'x-ferry-check-memory',
      handler: () => {
        if (machine.isRunning) throw new QmpError('GenericError', 'Stop the guest first: the memory check needs a guest that does not run');
        this.refuseWhileRamArrives();
        if (machine.memory.length === 0) throw new QmpError('GenericError', 'The guest has no RAM');
        const check = checkSweepCounters(machine.memory);
        return { ok: check.ok, pass: check.pass, ahead: check.ahead, ...(check.problem ? { problem: check.problem } : {}) };
      },
    });
    qmp.register({
      name: 'x-ferry-ram-digest',
      handler: () => {
        if (machine.isRunning) throw new QmpError('GenericError', 'Stop the guest first: a digest of running memory means nothing');
        this.refuseWhileRamArrives();
        const hash = createHash('sha256');
        for (const block of machine.memory) {
          hash.update(block.idstr);
          hashBlock(hash, block);
        }
        return { sha256: hash.digest('hex') };
      },
    });
    qmp.register({
      name: 'x-ferry-query-state',
      handler: () => {
        if (machine.isRunning) throw new QmpError('GenericError', 'Stop the guest first: CPU state is only read while paused');
        return { sections: machine.stateSections.map((s) => ({ idstr: s.idstr, 'instance-id': s.instanceId, state: toJson(migratedState(s.description, s.save())) })) };
      },
    });
    qmp.register({
      name: 'x-ferry-console-input',
      args: { data: t.str },
      handler: (args) => {
        machine.consoleInput(new TextEncoder().encode(args.data));
      },
    });
  }

  /**
   * human-monitor-command: HMP's text, with the CR before each newline that QEMU's monitor
   * adds, so that tools that read QEMU's answers read Ferry's the same way.
   */
  private async hmp(commandLine: string, ctx: QmpCommandContext): Promise<string> {
    const text = await runHmp(commandLine, { qmp: (name, args) => this.qmp.invoke(name, args ?? {}, ctx) });
    return text.replace(/\r?\n/g, '\r\n');
  }
}

/** QEMU's `-qmp unix:PATH,server=on,wait=off`: the options only restate what Ferry always does. */
export function stripQemuServerOptions(address: string): string {
  if (!/^(unix:.+|tcp:.+:\d+)/.test(address)) {
    throw new ConfigError(`Invalid --qmp "${address}": expected unix:PATH or tcp:HOST:PORT`);
  }
  const parts = address.split(',');
  const known = /^(server(=on)?|wait=off|nowait)$/;
  for (const option of parts.slice(1)) {
    if (!known.test(option)) throw new ConfigError(`Unsupported QMP option "${option}" in "${address}": Ferry always serves and never waits`);
  }
  return parts[0]!;
}

function parameterSchema(): Fields {
  const fields: Record<string, Schema> = {};
  for (const [name, value] of Object.entries(DEFAULT_MIGRATION_PARAMETERS)) {
    fields[`${name}?`] = typeof value === 'boolean' ? t.bool : typeof value === 'string' ? (name.startsWith('tls') ? t.nullable(t.str) : t.str) : t.uint;
  }
  return fields;
}

/** The state as the stream carries it: subsections that are not needed are not sent, so not compared. */
function migratedState(description: VmStateDescription, state: VmStateValue): VmStateValue {
  const result: VmStateValue = { ...state };
  for (const sub of description.subsections ?? []) {
    const inner = result[sub.key];
    if (!sub.needed(state)) delete result[sub.key];
    else if (inner && typeof inner === 'object') result[sub.key] = migratedState(sub.description, inner as VmStateValue);
  }
  for (const field of description.fields) {
    const value = result[field.name];
    if (field.type === 'struct' && field.struct && value && typeof value === 'object' && !Array.isArray(value)) {
      result[field.name] = migratedState(field.struct, value as VmStateValue);
    }
  }
  return result;
}

/** State values as JSON: bigints as decimal strings, buffers as hex. */
function toJson(value: unknown): unknown {
  if (typeof value === 'bigint') return value.toString();
  if (value instanceof Uint8Array) return Buffer.from(value).toString('hex');
  if (Array.isArray(value)) return value.map(toJson);
  if (value !== null && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, toJson(v)]));
  }
  return value;
}
