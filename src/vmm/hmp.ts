// HMP, QEMU's human monitor, as far as migration and run state go: the command lines
// `human-monitor-command` takes for them in QEMU 7.2 (info migrate, migrate -d URI,
// migrate_set_parameter downtime-limit 100, …), parsed as QEMU parses them. As in QEMU,
// each runs the QMP command behind it, and what it prints is its whole answer: errors are
// text ("Error: …"), not QMP errors; an unknown command says so in QEMU's words.

import { errorMessage } from '../errors.js';
import { parameterType } from '../migration/parameters.js';
import { formatInfoMigrate, type MigrationInfo } from '../migration/query.js';
import { parseSize } from '../size.js';
import { parseObjectOption } from './objects.js';
import { formatMemdev, type Memdev } from './memdev.js';

/** The object properties that are booleans (tls-creds-x509's). */
const BOOLEAN_OBJECT_PROPERTIES = new Set(['verify-peer', 'sanity-check', 'loaded', 'share', 'prealloc']);

export interface HmpContext {
  /** Run the QMP command behind an HMP command; throws what it throws. */
  qmp(name: string, args?: Record<string, unknown>): Promise<unknown>;
}

/** A command line HMP cannot parse: printed with QEMU's pointer to help. */
class HmpUsageError extends Error {
  constructor(readonly command: string, message: string, readonly named = true) {
    super(message);
  }
}

/** A value HMP cannot turn into the parameter's type: printed as the command's error. */
class HmpValueError extends Error {}

interface HmpCommand {
  readonly args: string;
  readonly help: string;
  run(words: Words, ctx: HmpContext): Promise<string>;
}

/** The rest of a command line, taken word by word (QEMU's get_str: "double quotes" group, with \\ escapes). */
class Words {
  #rest: string;

  constructor(readonly command: string, rest: string) {
    this.#rest = rest;
  }

  /** The next word, or a usage error naming what was expected. */
  next(): string {
    const word = this.optional();
    if (word === undefined) throw new HmpUsageError(this.command, 'string expected');
    return word;
  }

  optional(): string | undefined {
    const text = this.#rest.trimStart();
    if (text === '') return undefined;
    if (text[0] !== '"') {
      const end = text.search(/\s/);
      this.#rest = end < 0 ? '' : text.slice(end);
      return end < 0 ? text : text.slice(0, end);
    }
    let word = '';
    for (let i = 1; i < text.length; i++) {
      const c = text[i]!;
      if (c === '"') {
        this.#rest = text.slice(i + 1);
        return word;
      }
      if (c === '\\' && i + 1 < text.length) {
        const escaped = text[++i]!;
        word += escaped === 'n' ? '\n' : escaped === 'r' ? '\r' : escaped;
      } else {
        word += c;
      }
    }
    throw new HmpUsageError(this.command, 'unterminated string');
  }

  /** Leading -x flags (several may share one dash), each of `allowed`. */
  flags(allowed: string): Set<string> {
    const found = new Set<string>();
    for (;;) {
      const text = this.#rest.trimStart();
      const match = /^-(\S+)/.exec(text);
      if (!match) return found;
      for (const flag of match[1]!) {
        if (!allowed.includes(flag)) throw new HmpUsageError(this.command, `unsupported option -${flag}`);
        found.add(flag);
      }
      this.#rest = text.slice(match[0].length);
    }
  }

  /** Nothing may follow the last argument. */
  end(): void {
    if (this.#rest.trim() !== '') throw new HmpUsageError(this.command, 'extraneous characters at the end of line');
  }
}

const ON = new Set(['on', 'yes', 'true', 'y']);
const OFF = new Set(['off', 'no', 'false', 'n']);
/** A size with an optional binary suffix (src/size.ts), or undefined where that refuses it. */
function sizeOf(text: string, name: string, defaultUnit = ''): number | undefined {
  try {
    return parseSize(text, name, defaultUnit);
  } catch {
    return undefined;
  }
}

/** A migrate_set_parameter value as its parameter's type, as hmp_migrate_set_parameter parses it. */
export function parseParameterValue(name: string, text: string): unknown {
  const type = parameterType(name);
  switch (type) {
    case undefined:
      throw new HmpValueError(`invalid parameter value: ${name}`);
    case 'str':
    case 'MultiFDCompression':
      return text;
    case 'bool':
      if (ON.has(text)) return true;
      if (OFF.has(text)) return false;
      throw new HmpValueError(`Parameter '${name}' expects 'on' or 'off'`);
    case 'size': {
      // max-bandwidth alone counts a bare number in MiB (qemu_strtosz_MiB).
      if (name === 'max-bandwidth') {
        const bytes = sizeOf(text, name, 'M');
        if (bytes === undefined) throw new HmpValueError(`Invalid size ${text}`);
        return bytes;
      }
      return sizeValue(name, text);
    }
    case 'uint64':
      // downtime-limit goes through QEMU's size visitor too: 1k is 1024 ms.
      return sizeValue(name, text);
    default: {
      if (!/^\d+$/.test(text) || Number(text) >= 2 ** 64) throw new HmpValueError(`Parameter '${name}' expects uint64`);
      const value = Number(text);
      const max = type === 'uint8' ? 0xff : type === 'uint32' ? 0xffffffff : Number.MAX_SAFE_INTEGER;
      if (value > max) throw new HmpValueError(`Parameter '${name}' expects ${type}_t`);
      return value;
    }
  }
}

function sizeValue(name: string, text: string): number {
  const bytes = sizeOf(text, name);
  if (bytes === undefined) {
    throw new HmpValueError(
      `Parameter '${name}' expects a non-negative number below 2^64\n` +
        'Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\nand exabytes, respectively.',
    );
  }
  return bytes;
}

const onOff = (value: unknown): string => (value ? 'on' : 'off');

/** `info migrate_parameters` in QEMU 7.2's order and units (hmp_info_migrate_parameters). */
export function formatMigrateParameters(p: Record<string, unknown>): string {
  const lines = [
    `announce-initial: ${p['announce-initial']} ms`,
    `announce-max: ${p['announce-max']} ms`,
    `announce-rounds: ${p['announce-rounds']}`,
    `announce-step: ${p['announce-step']} ms`,
    `compress-level: ${p['compress-level']}`,
    `compress-threads: ${p['compress-threads']}`,
    `compress-wait-thread: ${onOff(p['compress-wait-thread'])}`,
    `decompress-threads: ${p['decompress-threads']}`,
    `throttle-trigger-threshold: ${p['throttle-trigger-threshold']}`,
    `cpu-throttle-initial: ${p['cpu-throttle-initial']}`,
    `cpu-throttle-increment: ${p['cpu-throttle-increment']}`,
    `cpu-throttle-tailslow: ${onOff(p['cpu-throttle-tailslow'])}`,
    `max-cpu-throttle: ${p['max-cpu-throttle']}`,
    `tls-creds: '${p['tls-creds']}'`,
    `tls-hostname: '${p['tls-hostname']}'`,
    `max-bandwidth: ${p['max-bandwidth']} bytes/second`,
    `downtime-limit: ${p['downtime-limit']} ms`,
    `x-checkpoint-delay: ${p['x-checkpoint-delay']} ms`,
    `block-incremental: ${onOff(p['block-incremental'])}`,
    `multifd-channels: ${p['multifd-channels']}`,
    `multifd-compression: ${p['multifd-compression']}`,
    `xbzrle-cache-size: ${p['xbzrle-cache-size']} bytes`,
    `max-postcopy-bandwidth: ${p['max-postcopy-bandwidth']}`,
    `tls-authz: '${p['tls-authz']}'`,
  ];
  return lines.join('\n') + '\n';
}

/** A command whose words are, in order, the QMP command's arguments named `names`, and which prints nothing. */
function plain(qmpName: string, help: string, names: readonly string[] = []): HmpCommand {
  return {
    args: names.join(' '),
    help,
    async run(words, ctx) {
      const args = Object.fromEntries(names.map((name) => [name, words.next()]));
      words.end();
      await ctx.qmp(qmpName, names.length > 0 ? args : undefined);
      return '';
    },
  };
}

const COMMANDS: Record<string, HmpCommand> = {
  migrate: {
    args: '[-d] uri',
    help: 'start an outgoing migration to uri (tcp:, unix:, fd:, exec:); it always runs detached here',
    async run(words, ctx) {
      const flags = words.flags('dbir');
      const uri = words.next();
      words.end();
      await ctx.qmp('migrate', { uri, detach: flags.has('d'), blk: flags.has('b'), inc: flags.has('i'), resume: flags.has('r') });
      // QEMU over QMP cannot hold the monitor until the end either, and says so.
      return flags.has('d') ? '' : 'terminal does not allow synchronous migration, continuing detached\n';
    },
  },
  migrate_set_capability: {
    args: 'capability on|off',
    help: 'turn a migration capability on or off',
    async run(words, ctx) {
      const capability = words.next();
      const state = words.optional();
      words.end();
      // QEMU's on/off argument check prints no command name before its message.
      if (state !== 'on' && state !== 'off') throw new HmpUsageError(words.command, "Expected 'on' or 'off'", false);
      try {
        await ctx.qmp('migrate-set-capabilities', { capabilities: [{ capability, state: state === 'on' }] });
      } catch (err) {
        // QEMU checks the name itself before anything else, and words it as for a parameter.
        if (/does not accept value/.test(errorMessage(err))) throw new HmpValueError(`invalid parameter value: ${capability}`);
        throw err;
      }
      return '';
    },
  },
  migrate_set_parameter: {
    args: 'parameter value',
    help: 'set a migration parameter (sizes take k, M, G suffixes; a bare max-bandwidth is in MiB/s)',
    async run(words, ctx) {
      const name = words.next();
      const text = words.next();
      words.end();
      if (name === 'block-bitmap-mapping') throw new HmpValueError('The block-bitmap-mapping parameter can only be set through QMP');
      await ctx.qmp('migrate-set-parameters', { [name]: parseParameterValue(name, text) });
      return '';
    },
  },
  calc_dirty_rate: {
    args: '[-r] [-b] seconds [sample_pages_per_GB]',
    help: 'start measuring how fast the guest dirties memory (-b: with the dirty bitmap instead of sampling pages); info dirty_rate shows the result',
    async run(words, ctx) {
      const flags = words.flags('rb');
      const secondsText = words.optional();
      if (secondsText === undefined) throw new HmpUsageError(words.command, 'unexpected end of expression', false);
      const seconds = integerArgument(words, secondsText);
      const pagesText = words.optional();
      const samplePages = pagesText === undefined ? undefined : integerArgument(words, pagesText);
      words.end();
      // hmp_calc_dirty_rate's own checks, answered without the "Error: " of a command's failure.
      if (seconds <= 0) return 'Incorrect period length specified!\n';
      if (flags.has('r') && flags.has('b')) return 'Either dirty ring or dirty bitmap can be specified!\n';
      const mode = flags.has('r') ? 'dirty-ring' : flags.has('b') ? 'dirty-bitmap' : undefined;
      await ctx.qmp('calc-dirty-rate', {
        'calc-time': seconds,
        ...(samplePages !== undefined ? { 'sample-pages': samplePages } : {}),
        ...(mode !== undefined ? { mode } : {}),
      });
      return `Starting dirty rate measurement with period ${seconds} seconds\n[Please use 'info dirty_rate' to check results]\n`;
    },
  },
  migrate_cancel: plain('migrate_cancel', 'cancel the outgoing migration; the guest runs on here'),
  migrate_continue: plain('migrate-continue', 'let a migration paused in that state (pre-switchover) go on', ['state']),
  migrate_pause: plain('migrate-pause', 'break the connection of a migration in post-copy, on either side: both pause, as after a network failure (migrate_recover and migrate -r go on)'),
  migrate_recover: plain('migrate-recover', 'on a destination whose post-copy paused: listen on URI for the source to resume', ['uri']),
  migrate_start_postcopy: plain('migrate-start-postcopy', 'switch the outgoing migration to post-copy (postcopy-ram on both sides): the guest runs on the destination while the rest of its RAM follows'),
  migrate_incoming: plain('migrate-incoming', 'start listening for the incoming migration of a VM started with --incoming defer', ['uri']),
  object_add: {
    args: '[qom-type=]type,id=str[,prop=value][,...]',
    help: 'make an object, as -object: tls-creds-x509,id=ID,dir=DIR[,endpoint=client|server][,verify-peer=on|off], or tls-creds-psk,id=ID,dir=DIR[,endpoint=…][,username=NAME]',
    async run(words, ctx) {
      const spec = words.next();
      words.end();
      let parsed: ReturnType<typeof parseObjectOption>;
      try {
        parsed = parseObjectOption(spec);
      } catch (err) {
        throw new HmpValueError(errorMessage(err));
      }
      // The command line's on/off for the boolean properties, as QEMU's keyval input reads them.
      const props: Record<string, unknown> = {};
      for (const [key, value] of Object.entries(parsed.props)) {
        // A memory backend's size as QEMU's size visitor reads one (suffixes; bare bytes).
        if (key === 'size') props[key] = sizeArgument(key, value);
        else if (!BOOLEAN_OBJECT_PROPERTIES.has(key)) props[key] = value;
        else if (ON.has(value)) props[key] = true;
        else if (OFF.has(value)) props[key] = false;
        else throw new HmpValueError(`Parameter '${key}' expects 'on' or 'off'`);
      }
      await ctx.qmp('object-add', { 'qom-type': parsed.type, id: parsed.id, ...props });
      return '';
    },
  },
  object_del: plain('object-del', 'delete an object made by -object or object_add', ['id']),
  stop: plain('stop', 'stop the vCPUs'),
  cont: plain('cont', 'run the vCPUs again (also: c)'),
  quit: plain('quit', 'end this Ferry process (also: q)'),
};
const ALIASES: Record<string, string> = { c: 'cont', q: 'quit' };

function sizeArgument(name: string, text: string): number {
  try {
    return parseSize(text, name);
  } catch {
    throw new HmpValueError(`Parameter '${name}' expects a size value`);
  }
}

/** An integer argument (decimal or 0x hex), with the words of QEMU's expression parser for anything else. */
function integerArgument(words: Words, text: string): number {
  if (/^(0x[0-9a-f]+|\d+)$/i.test(text)) return Number(text);
  const bad = [...text].find((c) => !/[0-9]/.test(c)) ?? text[0];
  throw new HmpUsageError(words.command, `invalid char '${bad}' in expression`, false);
}

const INFO: Record<string, { help: string; run(ctx: HmpContext): Promise<string> }> = {
  status: {
    help: 'whether the guest runs, and the run state when it does not',
    async run(ctx) {
      const { status, running } = (await ctx.qmp('query-status')) as { status: string; running: boolean };
      // hmp_info_status: "paused" alone is plain paused; any other stopped state is named.
      return `VM status: ${running ? 'running' : 'paused'}${!running && status !== 'paused' ? ` (${status})` : ''}\n`;
    },
  },
  migrate: {
    help: 'the migration\'s status and figures (query-migrate)',
    async run(ctx) {
      return formatInfoMigrate((await ctx.qmp('query-migrate')) as MigrationInfo);
    },
  },
  memdev: {
    help: 'the memory backends: guest RAM\'s first, with their size, prealloc and share (query-memdev)',
    async run(ctx) {
      return formatMemdev((await ctx.qmp('query-memdev')) as Memdev[]);
    },
  },
  ramblock: {
    help: 'the guest\'s RAM blocks: name, page size, offset, used and total length (x-query-ramblock)',
    async run(ctx) {
      return ((await ctx.qmp('x-query-ramblock')) as { 'human-readable-text': string })['human-readable-text'];
    },
  },
  name: {
    help: 'this VM\'s --name, if it has one',
    async run(ctx) {
      const { name } = (await ctx.qmp('query-name')) as { name?: string };
      return name === undefined ? '' : `${name}\n`;
    },
  },
  uuid: {
    help: 'this VM\'s --uuid (zeros without one)',
    async run(ctx) {
      return `${((await ctx.qmp('query-uuid')) as { UUID: string }).UUID}\n`;
    },
  },
  version: {
    help: 'the version query-version reports',
    async run(ctx) {
      const { qemu, package: pkg } = (await ctx.qmp('query-version')) as { qemu: { major: number; minor: number; micro: number }; package: string };
      return `${qemu.major}.${qemu.minor}.${qemu.micro}${pkg}\n`;
    },
  },
  dirty_rate: {
    help: 'the last dirty rate measurement (calc_dirty_rate)',
    async run(ctx) {
      const info = (await ctx.qmp('query-dirty-rate')) as Record<string, unknown>;
      return [
        `Status: ${info['status']}`,
        `Start Time: ${info['start-time']} (ms)`,
        ...(info['mode'] === 'page-sampling' ? [`Sample Pages: ${info['sample-pages']} (per GB)`] : []),
        `Period: ${info['calc-time']} (sec)`,
        `Mode: ${info['mode']}`,
        `Dirty rate: ${info['dirty-rate'] === undefined ? '(not ready)' : `${info['dirty-rate']} (MB/s)`}`,
      ].join('\n') + '\n';
    },
  },
  migrate_parameters: {
    help: 'the migration parameters',
    async run(ctx) {
      return formatMigrateParameters((await ctx.qmp('query-migrate-parameters')) as Record<string, unknown>);
    },
  },
  migrate_capabilities: {
    help: 'the migration capabilities, on or off',
    async run(ctx) {
      const caps = (await ctx.qmp('query-migrate-capabilities')) as { capability: string; state: boolean }[];
      return caps.map((c) => `${c.capability}: ${onOff(c.state)}\n`).join('');
    },
  },
};

function helpText(topic: string | undefined): string {
  if (topic === 'info') return Object.entries(INFO).map(([name, info]) => `info ${name} -- ${info.help}\n`).join('');
  const names = topic === undefined ? Object.keys(COMMANDS) : [ALIASES[topic] ?? topic];
  const lines = names.filter((name) => COMMANDS[name]).map((name) => `${name}${COMMANDS[name]!.args ? ` ${COMMANDS[name]!.args}` : ''} -- ${COMMANDS[name]!.help}\n`);
  if (topic === undefined) lines.push('info [subcommand] -- show something (help info lists what)\n', 'help [command] -- this list\n');
  return lines.length > 0 ? lines.join('') : `unknown command: '${topic}'\n`;
}

/** Run one HMP command line; the text is what the monitor prints (lines end in \n). */
export async function runHmp(commandLine: string, ctx: HmpContext): Promise<string> {
  const line = commandLine.trim();
  const space = line.search(/\s/);
  const name = space < 0 ? line : line.slice(0, space);
  const rest = space < 0 ? '' : line.slice(space);
  if (name === '') return '';
  try {
    if (name === 'help' || name === '?') {
      const words = new Words(name, rest);
      const topic = words.optional();
      return helpText(topic);
    }
    if (name === 'info') {
      const words = new Words(name, rest);
      const sub = words.optional();
      if (sub === undefined) return helpText('info');
      const info = INFO[sub];
      if (!info) return `unknown command: 'info ${sub}'\n`;
      words.end();
      return await info.run(ctx);
    }
    const command = COMMANDS[ALIASES[name] ?? name];
    if (!command) return `unknown command: '${name}'\n`;
    return await command.run(new Words(name, rest), ctx);
  } catch (err) {
    if (err instanceof HmpUsageError) return `${err.named ? `${err.command}: ` : ''}${err.message}\nTry "help ${err.command}" for more information\n`;
    return `Error: ${errorMessage(err)}\n`;
  }
}
