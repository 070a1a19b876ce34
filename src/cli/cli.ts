// The `ferry` command line, loaded by main.ts: parses it with commander and hands each
// subcommand to its module. User-facing errors are one line; --debug adds the stack.

import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import { settlePrestartedWorkers } from '../sys/early-worker.js';
import { FerryError } from '../errors.js';
import { parseSize } from '../size.js';
import { FERRY_VERSION } from '../qmp/ferry-version.js';

const debug = process.argv.includes('--debug');

/** Exit once the worker main.ts may have started ahead is safe to end (see settlePrestartedWorkers). */
function exitSoon(code: number): void {
  void settlePrestartedWorkers().finally(() => process.exit(code));
}

function fail(err: unknown): void {
  if (err instanceof CommanderError) {
    // Commander has printed its message (or the help, or the version) already.
    exitSoon(err.exitCode);
    return;
  }
  if (debug) {
    console.error(err);
  } else if (err instanceof FerryError) {
    console.error(`ferry: ${err.message}`);
  } else {
    const message = err instanceof Error ? err.message : String(err);
    console.error(`ferry: ${message} (run with --debug for details)`);
  }
  exitSoon(1);
}

function sizeArg(what: string, defaultUnit = 'M') {
  return (value: string): number => {
    try {
      return parseSize(value, what, defaultUnit);
    } catch (err) {
      throw new InvalidArgumentError((err as Error).message);
    }
  };
}

function intArg(what: string, min = 0) {
  return (value: string): number => {
    const n = Number(value);
    if (!Number.isInteger(n) || n < min) throw new InvalidArgumentError(`${what} must be an integer ≥ ${min}, got "${value}"`);
    return n;
  };
}

/** Rates as QEMU takes them: bytes/s, with K/M/G suffixes (128M = 128 MiB/s). */
/** --multifd-compression METHOD[:LEVEL]: QEMU's multifd-compression and the method's level parameter. */
function compressionArg(value: string): { method: 'none' | 'zlib' | 'zstd'; level?: number } {
  const m = /^(none|zlib|zstd)(?::(\d+))?$/.exec(value);
  if (!m) throw new InvalidArgumentError(`--multifd-compression takes none, zlib or zstd, optionally with :LEVEL (zlib:6, zstd:3), got "${value}"`);
  const method = m[1] as 'none' | 'zlib' | 'zstd';
  if (m[2] === undefined) return { method };
  const level = Number(m[2]);
  const max = method === 'zlib' ? 9 : method === 'zstd' ? 20 : undefined;
  if (max === undefined) throw new InvalidArgumentError('--multifd-compression none takes no level');
  if (level > max) throw new InvalidArgumentError(`--multifd-compression ${method} takes a level from 0 to ${max}, got ${level}`);
  return { method, level };
}

function rateArg(value: string): number {
  try {
    return parseSize(value, 'bandwidth');
  } catch (err) {
    throw new InvalidArgumentError((err as Error).message);
  }
}

function collect(value: string, previous: string[] = []): string[] {
  return [...previous, value];
}

const program = new Command();
program
  .name('ferry')
  .description('A virtual machine monitor in TypeScript, built around QEMU\'s live-migration design')
  .version(FERRY_VERSION, '-V, --version')
  .option('--debug', 'print stack traces and internal detail on errors')
  .showHelpAfterError('(run "ferry help" for usage)')
  // Errors come to fail() instead of process.exit, so the exit can wait for workers.
  .exitOverride()
  .configureOutput({ outputError: (str, write) => write(str) });

program
  .command('run')
  .description('run a guest (and optionally wait for an incoming migration)')
  .option('-m, --memory <size>', 'guest RAM, e.g. 256M or 1G (a bare number means MiB, as in QEMU); 128M, or the memory backend\'s size, unless given', sizeArg('memory size'))
  .addOption(new Option('--accel <name>', 'accelerator: kvm, sim (a workload model, no guest code) or v86 (x86 emulator, boots Linux); default kvm where /dev/kvm opens, else sim').choices(['kvm', 'sim', 'v86']))
  .option('--guest <spec>', 'built-in guest: builtin:sweep[,from=1M,to=100M], builtin:hot,mib=N, builtin:random, builtin:idle (sim also takes rate=PAGES_PER_SEC)', 'builtin:sweep')
  .option('--kernel <file>', 'Linux kernel (bzImage) to boot (v86)')
  .option('--initrd <file>', 'initial ramdisk (v86)')
  .option('--append <cmdline>', 'kernel command line (v86)')
  .option('--smp <n>', 'number of vCPUs', intArg('--smp', 1), 1)
  .option('--qmp <uri>', 'QMP server: unix:PATH or tcp:HOST:PORT (QEMU\'s ",server=on,wait=off" suffix is accepted); repeatable', collect, [])
  .option('--serial <spec>', 'serial console: stdio, file:PATH, unix:PATH (a socket you connect to), none', 'stdio')
  .option('-S', 'do not start the guest until QMP "cont"')
  .option('--name <name>', 'a name for this VM (query-name)')
  .option('--uuid <uuid>', 'this VM\'s UUID (QEMU\'s -uuid; query-uuid): with the validate-uuid capability a destination takes only a stream from the same UUID')
  .option('--incoming <uri>', 'wait for a migration: tcp:HOST:PORT, unix:PATH, fd:N, exec:COMMAND, or "defer" for QMP migrate-incoming')
  .option('--mem-prealloc', 'back all guest RAM with host memory at start (QEMU\'s -mem-prealloc): a destination then takes pages at wire speed')
  .option('--no-warm-up', 'do not warm the migration code up once the VM has started (a scratch migration within this process, so that a real one does not start with cold code)')
  .option('--object <spec>', 'make an object, as QEMU\'s -object: tls-creds-x509,id=ID,dir=DIR[,endpoint=client|server][,verify-peer=on|off] or tls-creds-psk,id=ID,dir=DIR[,endpoint=client|server][,username=NAME] or tls-creds-anon,id=ID[,endpoint=client|server] (what tls-creds names), authz-simple,id=ID,identity=NAME (what tls-authz names; ,, is a comma), or memory-backend-file,id=ID,size=SIZE,mem-path=PATH[,share=on][,prealloc=on] / memory-backend-ram,id=ID,size=SIZE (what --machine memory-backend names); repeatable', collect, [])
  .option('--machine <props>', 'machine properties, as QEMU\'s -machine: memory-backend=ID takes guest RAM from that memory backend object (its id names the RAM block; with share=on another Ferry can map the same RAM, and the x-ignore-shared capability then migrates without copying it)')
  .action(async (opts) => {
    const { runCommand } = await import('./run-command.js');
    await runCommand(opts);
  });

program
  .command('migrate')
  .description('migrate a running VM (Ferry or QEMU) through its QMP socket, with a live progress bar')
  .requiredOption('--qmp <socket>', 'the source\'s QMP socket: a unix socket path or tcp:HOST:PORT')
  .argument('<uri>', 'where to send it: tcp:HOST:PORT, unix:PATH, fd:NAME, exec:COMMAND')
  .option('--downtime-limit <ms>', 'largest acceptable downtime in milliseconds', intArg('--downtime-limit', 1))
  .option('--max-bandwidth <rate>', 'bandwidth cap in bytes/s with K/M/G suffixes, e.g. 128M; 0 for unlimited', rateArg)
  .option('--xbzrle', 'turn on the xbzrle capability (delta-encode re-sent pages)')
  .option('--auto-converge', 'turn on the auto-converge capability (throttle the guest\'s vCPUs while it dirties RAM faster than it can be sent)')
  .option('--return-path', 'turn on the return-path capability (complete only once the destination says it loaded everything; otherwise the source guest runs again)')
  .option('--validate-uuid', 'turn on the validate-uuid capability (a destination with a UUID of its own loads only a stream from the same UUID)')
  .option('--postcopy', 'turn on the postcopy-ram capability (on the destination too with --dest-qmp; otherwise turn it on there first) and switch to post-copy once the first pass is sent: the guest then runs on the destination while the rest of its RAM follows')
  .option('--background-snapshot', 'turn on the background-snapshot capability: save the VM as it was when the migration began while it runs on (e.g. to "exec:cat > FILE"; ferry run --incoming "exec:cat FILE" restores it)')
  .option('--x-ignore-shared', 'turn on the x-ignore-shared capability (on the destination too with --dest-qmp): RAM both VMs map from one file (ferry run --object memory-backend-file,…,share=on --machine memory-backend=ID) is not sent at all — a same-host migration moves only CPU and device state')
  .option('--release-ram', 'turn on the release-ram capability: with --postcopy, the source gives its guest\'s RAM back to the host as post-copy sends it (it can then never run the guest again)')
  .option('--multifd [channels]', 'turn on the multifd capability: pages of data go over this many more connections (multifd-channels; 2 unless given), on the destination too with --dest-qmp (otherwise turn it on there first); tcp: and unix: only', intArg('--multifd', 1))
  .option('--multifd-compression <method[:level]>', 'compress the pages on the multifd channels: none, zlib or zstd, with an optional level (zlib 0-9, zstd 0-20; 1 unless given), as QEMU\'s multifd-compression; turns --multifd on, and is set on the destination too with --dest-qmp (the two must agree)', compressionArg)
  .option('--tls-creds <id>', 'encrypt every connection with TLS, with the source\'s tls-creds-x509, tls-creds-psk or tls-creds-anon object ID (endpoint=client; ferry run --object or object-add); the destination needs its own (endpoint=server) set as tls-creds before migrate-incoming')
  .option('--tls-hostname <name>', 'the name the destination\'s certificate must carry (tls-hostname; default: the tcp: URI\'s host; needed for unix:, fd: and exec:)')
  .option('--no-progress', 'no progress bar, only the summary')
  .option('--report <file.html>', 'write a self-contained HTML report of the migration')
  .option('--dest-qmp <socket>', 'the destination\'s QMP socket: the summary then also says how long the guest was paused (source STOP to destination RESUME) and how the destination ended')
  .action(async (uri: string, opts) => {
    const { migrateCommand } = await import('./migrate-command.js');
    process.exitCode = await migrateCommand({
      qmp: opts.qmp,
      uri,
      ...(opts.downtimeLimit !== undefined ? { downtimeLimitMs: opts.downtimeLimit } : {}),
      ...(opts.maxBandwidth !== undefined ? { maxBandwidth: opts.maxBandwidth } : {}),
      capabilities: [...(opts.xbzrle ? ['xbzrle'] : []), ...(opts.autoConverge ? ['auto-converge'] : []), ...(opts.returnPath ? ['return-path'] : []), ...(opts.validateUuid ? ['validate-uuid'] : []), ...(opts.backgroundSnapshot ? ['background-snapshot'] : []), ...(opts.releaseRam ? ['release-ram'] : []), ...(opts.xIgnoreShared ? ['x-ignore-shared'] : [])],
      progress: opts.progress,
      ...(opts.postcopy ? { postcopy: true } : {}),
      ...(opts.multifd !== undefined || opts.multifdCompression !== undefined ? { multifd: opts.multifd === undefined || opts.multifd === true ? true : opts.multifd } : {}),
      ...(opts.multifdCompression !== undefined ? { multifdCompression: opts.multifdCompression } : {}),
      ...(opts.tlsCreds !== undefined ? { tlsCreds: opts.tlsCreds } : {}),
      ...(opts.tlsHostname !== undefined ? { tlsHostname: opts.tlsHostname } : {}),
      ...(opts.report !== undefined ? { report: opts.report } : {}),
      ...(opts.destQmp !== undefined ? { destinationQmp: opts.destQmp } : {}),
    });
  });

program
  .command('qmp')
  .description('send one QMP command and print its answer, e.g. ferry qmp /tmp/vm.sock query-status')
  .argument('<socket>', 'a unix socket path or tcp:HOST:PORT')
  .argument('<command>', 'the QMP command, e.g. query-migrate')
  .argument('[args...]', 'arguments as key=value (values are JSON where they parse: 300, true, {"a":1})')
  .option('--pretty', 'indent the JSON answer')
  .action(async (socket: string, command: string, args: string[], opts) => {
    const { qmpCommand } = await import('./qmp-command.js');
    process.exitCode = await qmpCommand(socket, command, args, { pretty: Boolean(opts.pretty) });
  });

program
  .command('hmp')
  .description('send one HMP command line (human-monitor-command) and print its text, e.g. ferry hmp /tmp/vm.sock info migrate')
  .argument('<socket>', 'a unix socket path or tcp:HOST:PORT')
  .argument('<words...>', 'the command line, e.g. migrate_set_parameter downtime-limit 100')
  // HMP's own flags (migrate -d, calc_dirty_rate -b) belong to the command line, not to ferry.
  .allowUnknownOption()
  .action(async (socket: string, words: string[]) => {
    const { hmpCommand } = await import('./qmp-command.js');
    process.exitCode = await hmpCommand(socket, words);
  });

program
  .command('demo')
  .description('start a source and a destination, live-migrate the guest between them, and show that it kept running')
  .addOption(new Option('--accel <name>', 'accelerator for both sides').choices(['kvm', 'sim', 'v86']))
  .option('-m, --memory <size>', 'guest RAM', sizeArg('memory size'))
  .action(async (opts) => {
    const { demoCommand } = await import('./demo-command.js');
    process.exitCode = await demoCommand(opts);
  });

process.on('unhandledRejection', fail);
program.parseAsync(process.argv).catch(fail);
