// What this machine lets Node move: loopback tcp and unix throughput between TWO Node
// processes (raw sockets, then the same through Ferry's Channel, so the abstraction's cost
// shows), memcpy bandwidth, and how fast the host backs fresh memory. The migration
// benchmark reuses measureCeilings().

import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { connect, listen } from '../src/transport/index.js';
import { HostMemory } from '../src/sys/host-memory.js';
import { adoptWithPooledReads, PooledReads, ReadBufferPool } from '../src/transport/read-pool.js';

export interface CeilingOptions {
  /** Bytes moved per socket run (default 2 GiB). */
  readonly bytes?: number;
  /** Runs per case; the figure reported is the median (default 3). */
  readonly runs?: number;
  /** Size of each write (default 1 MiB). */
  readonly chunkSize?: number;
  /** Size of the memcpy buffers (default 256 MiB). */
  readonly memcpyBytes?: number;
  /** Also measure through Ferry's Channel (default true). */
  readonly channel?: boolean;
  /** Also measure memory to memory (default true; see memoryReceiver). */
  readonly memory?: boolean;
}

export interface Ceilings {
  /** Raw net.Socket between two Node processes, loopback tcp, median bytes/s. */
  readonly tcpBytesPerSec: number;
  readonly unixBytesPerSec: number;
  /** The same moves through transport.connect/listen Channels (NaN when not measured). */
  readonly channelTcpBytesPerSec: number;
  readonly channelUnixBytesPerSec: number;
  /**
   * Memory to memory, as a migration moves RAM: through Ferry's Channel from a 1 GiB region
   * of huge-page-backed memory, each byte sent once, into another such region in the
   * receiver (NaN when not measured). The other cases send one 1 MiB buffer again and again
   * and read into buffers used again and again, which stay in the caches.
   */
  readonly memoryTcpBytesPerSec: number;
  readonly memoryUnixBytesPerSec: number;
  /** Uint8Array.set of warm memory, median bytes/s. */
  readonly memcpyBytesPerSec: number;
  /**
   * Backing fresh anonymous memory (MADV_POPULATE_WRITE), bytes/s for each 256 MiB of one
   * 1 GiB allocation, in order. Under these machines' nested virtualization this depends on
   * whether the VM ever used those physical pages before: ~0.6 GB/s for memory it never
   * touched, ~20 GB/s for memory it did. A lazy destination pays this for every page.
   */
  readonly firstTouchBytesPerSec: readonly number[];
  /** Every run's figure, by case name, in run order. */
  readonly samples: Readonly<Record<CaseName, readonly number[]>>;
  /**
   * CPU seconds the receiving process spent per GB received (user + system), median per
   * socket case: less sensitive to other tenants than throughput, and where reading
   * into fresh versus reused buffers shows.
   */
  readonly receiverCpuSecondsPerGB: Readonly<Record<SocketCase, number>>;
  /** The same for the sending process (measured in the peer around its send loop). */
  readonly senderCpuSecondsPerGB: Readonly<Record<SocketCase, number>>;
  readonly bytes: number;
  readonly chunkSize: number;
  readonly runs: number;
}

type SocketCase = 'tcp' | 'unix' | 'channel-tcp' | 'channel-unix' | 'memory-tcp' | 'memory-unix';
type CaseName = SocketCase | 'memcpy';
type PeerMode = 'raw' | 'channel' | 'memory';

const PEER_FLAG = '--ceiling-peer';

export async function measureCeilings(options: CeilingOptions = {}): Promise<Ceilings> {
  const bytes = options.bytes ?? 2 * 1024 ** 3;
  const runs = options.runs ?? 3;
  const chunkSize = options.chunkSize ?? 1024 * 1024;
  const withChannel = options.channel ?? true;
  const withMemory = options.memory ?? true;
  const samples: Record<CaseName, number[]> = { tcp: [], unix: [], 'channel-tcp': [], 'channel-unix': [], 'memory-tcp': [], 'memory-unix': [], memcpy: [] };
  const cpu: Record<SocketCase, number[]> = { tcp: [], unix: [], 'channel-tcp': [], 'channel-unix': [], 'memory-tcp': [], 'memory-unix': [] };
  const senderCpu: Record<SocketCase, number[]> = { tcp: [], unix: [], 'channel-tcp': [], 'channel-unix': [], 'memory-tcp': [], 'memory-unix': [] };
  const record = (name: SocketCase, result: SocketResult): void => {
    samples[name].push(result.bytesPerSec);
    cpu[name].push(result.cpuSecondsPerGB);
    senderCpu[name].push(result.senderCpuSecondsPerGB);
  };
  const dir = mkdtempSync(join(tmpdir(), 'ferry-ceiling-'));
  try {
    // Interleave the cases run by run so that noise from other tenants spreads over all of them.
    for (let run = 0; run < runs; run++) {
      record('tcp', await measureSocket('raw', 'tcp:127.0.0.1:0', bytes, chunkSize));
      record('unix', await measureSocket('raw', `unix:${join(dir, `raw-${run}.sock`)}`, bytes, chunkSize));
      if (withChannel) {
        record('channel-tcp', await measureSocket('channel', 'tcp:127.0.0.1:0', bytes, chunkSize));
        record('channel-unix', await measureSocket('channel', `unix:${join(dir, `channel-${run}.sock`)}`, bytes, chunkSize));
      }
      if (withMemory) {
        record('memory-tcp', await measureSocket('memory', 'tcp:127.0.0.1:0', bytes, chunkSize));
        record('memory-unix', await measureSocket('memory', `unix:${join(dir, `memory-${run}.sock`)}`, bytes, chunkSize));
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  samples.memcpy.push(...measureMemcpy(options.memcpyBytes ?? 256 * 1024 ** 2, Math.max(runs, 5)));
  const firstTouchBytesPerSec = measureFirstTouch(1024 ** 3, 256 * 1024 ** 2);
  return {
    firstTouchBytesPerSec,
    tcpBytesPerSec: median(samples.tcp),
    unixBytesPerSec: median(samples.unix),
    channelTcpBytesPerSec: withChannel ? median(samples['channel-tcp']) : Number.NaN,
    channelUnixBytesPerSec: withChannel ? median(samples['channel-unix']) : Number.NaN,
    memoryTcpBytesPerSec: withMemory ? median(samples['memory-tcp']) : Number.NaN,
    memoryUnixBytesPerSec: withMemory ? median(samples['memory-unix']) : Number.NaN,
    memcpyBytesPerSec: median(samples.memcpy),
    samples,
    receiverCpuSecondsPerGB: {
      tcp: median(cpu.tcp),
      unix: median(cpu.unix),
      'channel-tcp': median(cpu['channel-tcp']),
      'channel-unix': median(cpu['channel-unix']),
      'memory-tcp': median(cpu['memory-tcp']),
      'memory-unix': median(cpu['memory-unix']),
    },
    senderCpuSecondsPerGB: {
      tcp: median(senderCpu.tcp),
      unix: median(senderCpu.unix),
      'channel-tcp': median(senderCpu['channel-tcp']),
      'channel-unix': median(senderCpu['channel-unix']),
      'memory-tcp': median(senderCpu['memory-tcp']),
      'memory-unix': median(senderCpu['memory-unix']),
    },
    bytes,
    chunkSize,
    runs,
  };
}

/**
 * One run of the channel ceiling over `transport` (a unix socket goes in `dir`): what the
 * migration benchmark measures again just before and just after each migration, so that a
 * migration is read against the ceiling of its own minute as well as the run's.
 */
export async function measureChannelOnce(transport: 'tcp' | 'unix', dir: string, bytes = 1024 ** 3, chunkSize = 1024 * 1024): Promise<SocketResult> {
  const uri = transport === 'tcp' ? 'tcp:127.0.0.1:0' : `unix:${join(dir, `ceiling-${process.hrtime.bigint()}.sock`)}`;
  return measureSocket('channel', uri, bytes, chunkSize);
}

/** This process receives; a child Node process connects and sends `bytes` in `chunkSize` writes. */
export interface SocketResult {
  readonly bytesPerSec: number;
  readonly cpuSecondsPerGB: number;
  readonly senderCpuSecondsPerGB: number;
}

async function measureSocket(mode: PeerMode, uri: string, bytes: number, chunkSize: number): Promise<SocketResult> {
  const receiver = mode === 'raw' ? await rawReceiver(uri) : mode === 'memory' ? await memoryReceiver(uri, bytes) : await channelReceiver(uri);
  const child = spawn(
    process.execPath,
    [fileURLToPath(import.meta.url), PEER_FLAG, mode, receiver.address, String(bytes), String(chunkSize)],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  let peerReport = '';
  child.stdout!.setEncoding('utf8').on('data', (text: string) => (peerReport += text));
  const exited = once(child, 'exit') as Promise<[number | null, NodeJS.Signals | null]>;
  try {
    const cpuBefore = process.cpuUsage();
    const { received, seconds } = await receiver.done;
    const cpuUsed = process.cpuUsage(cpuBefore);
    const [code, signal] = await exited;
    if (code !== 0) throw new Error(`Ceiling peer (${mode} ${uri}) exited with ${signal ?? `status ${code}`}`);
    if (received !== bytes) throw new Error(`Ceiling run over ${uri} received ${received} of ${bytes} bytes`);
    const cpuSeconds = (cpuUsed.user + cpuUsed.system) / 1e6;
    const senderCpuSeconds = Number(peerReport.trim());
    return {
      bytesPerSec: received / seconds,
      cpuSecondsPerGB: cpuSeconds / (received / 1e9),
      senderCpuSecondsPerGB: senderCpuSeconds / (received / 1e9),
    };
  } finally {
    if (child.exitCode === null) child.kill();
    await receiver.close();
  }
}

interface Receiver {
  readonly address: string;
  readonly done: Promise<{ received: number; seconds: number }>;
  close(): Promise<void>;
}

/** A net.Server listening on `uri` (unix:PATH, or tcp: on 127.0.0.1 at a port the kernel picks) and the address to connect to. */
async function plainServer(uri: string, options: net.ServerOpts): Promise<{ server: net.Server; address: string }> {
  const server = net.createServer(options);
  const path = uri.startsWith('unix:') ? uri.slice('unix:'.length) : undefined;
  server.listen(path !== undefined ? { path } : { host: '127.0.0.1', port: 0 });
  await once(server, 'listening');
  const bound = server.address();
  return { server, address: path !== undefined ? uri : `tcp:127.0.0.1:${(bound as net.AddressInfo).port}` };
}

/** The clock starts at the first byte, so process start-up is not counted. */
async function rawReceiver(uri: string): Promise<Receiver> {
  const { server, address } = await plainServer(uri, {});
  const done = new Promise<{ received: number; seconds: number }>((resolve, reject) => {
    server.once('connection', (socket) => {
      let received = 0;
      let start = 0;
      socket.on('data', (chunk: Buffer) => {
        if (received === 0) start = performance.now();
        received += chunk.byteLength;
      });
      socket.on('end', () => resolve({ received, seconds: (performance.now() - start) / 1000 }));
      socket.on('error', reject);
    });
  });
  return { address, done, close: () => new Promise((resolve) => server.close(() => resolve())) };
}

async function channelReceiver(uri: string): Promise<Receiver> {
  const listener = await listen(uri);
  const done = (async () => {
    const channel = await listener.accept();
    let received = 0;
    let start = 0;
    for (;;) {
      const chunk = await channel.read();
      if (chunk === null) break;
      if (received === 0) start = performance.now();
      received += chunk.byteLength;
      // As the stream reader does once it has parsed a chunk: the memory is read into again.
      channel.release?.(chunk);
    }
    const seconds = (performance.now() - start) / 1000;
    channel.destroy();
    return { received, seconds };
  })();
  return { address: listener.address, done, close: () => listener.close() };
}

/**
 * Receives into a fresh region of `bytes` backed by huge pages and populated first, as a
 * destination started with --mem-prealloc holds guest RAM: net.Socket reads straight into
 * it, 1 MiB after 1 MiB, so every byte lands in memory not read or written since it was
 * backed. (A migration's destination reads guest pages straight into guest RAM the same
 * way, ram-scatter.ts.)
 */
async function memoryReceiver(uri: string, bytes: number): Promise<Receiver> {
  const memory = HostMemory.allocate(bytes, { prealloc: true });
  const { server, address } = await plainServer(uri, { pauseOnConnect: true });
  const done = new Promise<{ received: number; seconds: number }>((resolve, reject) => {
    server.once('connection', (accepted: net.Socket) => {
      let received = 0;
      let start = 0;
      const { socket, pooledReads } = adoptWithPooledReads(accepted, { writable: false }, new PooledReads(new RegionPool(memory.bytes)));
      if (!pooledReads) return reject(new Error('Cannot read into memory: Node did not let the accepted socket be rebuilt'));
      pooledReads.attach((chunk) => {
        if (received === 0) start = performance.now();
        received += chunk.byteLength;
        return true;
      });
      socket.on('end', () => resolve({ received, seconds: (performance.now() - start) / 1000 }));
      socket.on('error', reject);
      socket.resume();
    });
  });
  return {
    address,
    done,
    close: () =>
      new Promise((resolve) =>
        server.close(() => {
          memory.unmap();
          resolve();
        }),
      ),
  };
}

/** Hands out `region` 1 MiB at a time, in order, coming round at its end; nothing comes back. */
class RegionPool extends ReadBufferPool {
  readonly #region: Uint8Array;
  #at = 0;

  constructor(region: Uint8Array) {
    super();
    this.#region = region;
  }

  override take(): Uint8Array {
    if (this.#at + this.bufferSize > this.#region.byteLength) this.#at = 0;
    const slice = this.#region.subarray(this.#at, this.#at + this.bufferSize);
    this.#at += this.bufferSize;
    return slice;
  }

  override release(): void {}
}

/** Sends, then prints the CPU seconds it spent sending for the parent to read. */
async function runPeer(mode: PeerMode, uri: string, bytes: number, chunkSize: number): Promise<void> {
  if (mode === 'memory') {
    // Guest RAM as a source holds it: backed by huge pages, written by this process, and
    // sent once, in order. Backing it is not counted.
    const memory = HostMemory.allocate(bytes, { prealloc: true });
    memory.bytes.fill(0xa5);
    await sendFromMemory(uri, memory.bytes, chunkSize, process.cpuUsage());
    memory.unmap();
    return;
  }
  await sendFromPeer(mode, uri, bytes, chunkSize, process.cpuUsage());
}

async function sendFromMemory(uri: string, region: Uint8Array, chunkSize: number, cpuStart: NodeJS.CpuUsage): Promise<void> {
  const channel = await connect(uri);
  for (let sent = 0; sent < region.byteLength; sent += chunkSize) {
    await channel.write(region.subarray(sent, Math.min(sent + chunkSize, region.byteLength)));
  }
  await channel.end();
  const used = process.cpuUsage(cpuStart);
  process.stdout.write(`${(used.user + used.system) / 1e6}\n`);
  channel.destroy();
}

async function sendFromPeer(
  mode: PeerMode,
  uri: string,
  bytes: number,
  chunkSize: number,
  cpuStart: NodeJS.CpuUsage,
): Promise<void> {
  const reportCpu = (): void => {
    const used = process.cpuUsage(cpuStart);
    process.stdout.write(`${(used.user + used.system) / 1e6}\n`);
  };
  // One buffer written again and again: its content does not matter, only the path it takes.
  const chunk = new Uint8Array(chunkSize).fill(0xa5);
  if (mode === 'channel') {
    const channel = await connect(uri);
    for (let sent = 0; sent < bytes; sent += chunkSize) {
      await channel.write(sent + chunkSize <= bytes ? chunk : chunk.subarray(0, bytes - sent));
    }
    await channel.end();
    reportCpu();
    channel.destroy();
    return;
  }
  const socket =
    uri.startsWith('unix:') ? net.connect({ path: uri.slice('unix:'.length) }) : net.connect({ host: '127.0.0.1', port: Number(uri.split(':')[2]) });
  await once(socket, 'connect');
  for (let sent = 0; sent < bytes; sent += chunkSize) {
    if (!socket.write(sent + chunkSize <= bytes ? chunk : chunk.subarray(0, bytes - sent))) await once(socket, 'drain');
  }
  socket.end();
  await once(socket, 'finish');
  reportCpu();
  socket.destroy();
}

function measureMemcpy(bytes: number, runs: number): number[] {
  const source = new Uint8Array(bytes).fill(0x5a);
  const target = new Uint8Array(bytes).fill(0);
  target.set(source); // fault every page in before timing
  const out: number[] = [];
  for (let run = 0; run < runs; run++) {
    const start = performance.now();
    target.set(source);
    out.push(bytes / ((performance.now() - start) / 1000));
  }
  return out;
}

/** Populate one fresh allocation `step` bytes at a time; bytes/s of each step. */
export function measureFirstTouch(bytes: number, step: number): number[] {
  const memory = HostMemory.allocate(bytes);
  const out: number[] = [];
  try {
    for (let offset = 0; offset < bytes; offset += step) {
      const start = performance.now();
      memory.populate(offset, step);
      out.push(step / ((performance.now() - start) / 1000));
    }
  } finally {
    memory.unmap();
  }
  return out;
}

/** The first-touch figures as "0.61–21.3 GB/s (0.61 0.62 …)". */
export function describeFirstTouch(rates: readonly number[]): string {
  const gb = rates.map((r) => r / 1e9);
  const digits = (v: number): string => v.toFixed(v < 10 ? 2 : 1);
  return `${digits(Math.min(...gb))}–${digits(Math.max(...gb))} GB/s per 256 MiB (${gb.map(digits).join(' ')})`;
}

export function median(values: readonly number[]): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

function gbps(bytesPerSec: number): string {
  return Number.isNaN(bytesPerSec) ? '—' : `${(bytesPerSec / 1e9).toFixed(2)} GB/s`;
}

function printTable(ceilings: Ceilings): void {
  const rows: [string, CaseName, number][] = [
    ['loopback tcp, raw \'data\' events', 'tcp', ceilings.tcpBytesPerSec],
    ['loopback tcp, Ferry Channel', 'channel-tcp', ceilings.channelTcpBytesPerSec],
    ['unix socket, raw \'data\' events', 'unix', ceilings.unixBytesPerSec],
    ['unix socket, Ferry Channel', 'channel-unix', ceilings.channelUnixBytesPerSec],
    ['loopback tcp, memory to memory', 'memory-tcp', ceilings.memoryTcpBytesPerSec],
    ['unix socket, memory to memory', 'memory-unix', ceilings.memoryUnixBytesPerSec],
    ['memcpy (Uint8Array.set, warm)', 'memcpy', ceilings.memcpyBytesPerSec],
  ];
  const moved = `${(ceilings.bytes / 1024 ** 3).toFixed(2)} GiB per run, ${ceilings.chunkSize / 1024} KiB writes`;
  console.log(`Ceilings (two Node ${process.version} processes; ${moved}; median of ${ceilings.runs})`);
  // Other tenants' load moves these figures a lot; say how busy the machine was.
  console.log(`load average at the end: ${loadavg().map((v) => v.toFixed(2)).join(' ')}`);
  console.log(`${'case'.padEnd(32)}${'median'.padStart(12)}${'CPU s/GB send'.padStart(15)}${'recv'.padStart(6)}   runs (GB/s)`);
  for (const [label, name, value] of rows) {
    const runs = ceilings.samples[name].map((v) => (v / 1e9).toFixed(2)).join(' ');
    const send = name === 'memcpy' ? '' : ceilings.senderCpuSecondsPerGB[name].toFixed(2);
    const recv = name === 'memcpy' ? '' : ceilings.receiverCpuSecondsPerGB[name].toFixed(2);
    console.log(`${label.padEnd(32)}${gbps(value).padStart(12)}${send.padStart(15)}${recv.padStart(6)}   ${runs}`);
  }
  console.log(`${'first touch of fresh memory'.padEnd(32)}${describeFirstTouch(ceilings.firstTouchBytesPerSec)}`);
  const ratio = (a: number, b: number): string => (Number.isNaN(a) ? '—' : `${((a / b) * 100).toFixed(0)}%`);
  console.log(
    `Channel / raw: tcp ${ratio(ceilings.channelTcpBytesPerSec, ceilings.tcpBytesPerSec)}, ` +
      `unix ${ratio(ceilings.channelUnixBytesPerSec, ceilings.unixBytesPerSec)}`,
  );
}

async function main(argv: string[]): Promise<void> {
  if (argv[0] === PEER_FLAG) {
    await runPeer(argv[1] as PeerMode, argv[2]!, Number(argv[3]), Number(argv[4]));
    return;
  }
  const { values } = await import('node:util').then((util) =>
    util.parseArgs({
      args: argv,
      options: {
        bytes: { type: 'string' },
        runs: { type: 'string' },
        chunk: { type: 'string' },
        json: { type: 'boolean' },
      },
    }),
  );
  const { parseSize } = await import('../src/size.js');
  const ceilings = await measureCeilings({
    ...(values.bytes !== undefined ? { bytes: parseSize(values.bytes, '--bytes') } : {}),
    ...(values.runs !== undefined ? { runs: Number(values.runs) } : {}),
    ...(values.chunk !== undefined ? { chunkSize: parseSize(values.chunk, '--chunk') } : {}),
  });
  if (values.json) {
    console.log(JSON.stringify(ceilings, null, 2));
    return;
  }
  printTable(ceilings);
  // The same again at once: the kernel hands back the memory just freed, before it is
  // reported to the hypervisor, and then it is backed at memory speed.
  console.log(`${'first touch again, at once'.padEnd(32)}${describeFirstTouch(measureFirstTouch(1024 ** 3, 256 * 1024 ** 2))}`);
}

if (process.argv[1] !== undefined && fileURLToPath(import.meta.url) === process.argv[1]) {
  main(process.argv.slice(2)).catch((err: unknown) => {
    console.error(err instanceof Error ? err.message : err);
    process.exitCode = 1;
  });
}
