// The system's libzstd (libzstd.so.1, which QEMU itself links), for multifd's zstd
// compression: one streaming context per channel, as QEMU's multifd-zstd.c keeps. Node 20
// has no zstd of its own. Each call works on a whole packet — its pages one after another
// in one buffer — on libuv's thread pool, so channels compress in parallel, as QEMU's
// channel threads do, while this thread goes on.

import koffi from 'koffi';
import { MigrationError } from '../errors.js';

/** ZSTD_cParameter ZSTD_c_compressionLevel. */
const ZSTD_C_COMPRESSION_LEVEL = 100;
/** ZSTD_EndDirective ZSTD_e_flush: everything given so far comes out, and the frame goes on. */
const ZSTD_E_FLUSH = 1;
/** sizeof(ZSTD_inBuffer) = sizeof(ZSTD_outBuffer): a pointer and two size_t. */
const BUFFER_STRUCT_BYTES = 24;

type Code = number | bigint;
type Callback = (err: unknown, result: Code) => void;
interface AsyncFn<A extends unknown[]> {
  (...args: A): Code;
  async(...args: [...A, Callback]): void;
}

interface Bindings {
  createCCtx(): unknown;
  freeCCtx(cctx: unknown): Code;
  setParameter(cctx: unknown, param: number, value: number): Code;
  compressStream2: AsyncFn<[cctx: unknown, output: bigint, input: bigint, endOp: number]>;
  createDCtx(): unknown;
  freeDCtx(dctx: unknown): Code;
  decompressStream: AsyncFn<[dctx: unknown, output: bigint, input: bigint]>;
  isError(code: Code): number;
  getErrorName(code: Code): string;
  compressBound(size: number): Code;
}

let bindings: Bindings | undefined;
let loadError: Error | undefined;

function zstd(): Bindings {
  if (bindings) return bindings;
  if (loadError) throw loadError;
  let lib: ReturnType<typeof koffi.load>;
  try {
    lib = koffi.load('libzstd.so.1');
  } catch (err) {
    loadError = new MigrationError(`multifd-compression zstd needs the system's libzstd (libzstd.so.1, Debian's libzstd1), which did not load: ${(err as Error).message}`);
    throw loadError;
  }
  bindings = {
    createCCtx: lib.func('void *ZSTD_createCCtx(void)'),
    freeCCtx: lib.func('size_t ZSTD_freeCCtx(void *cctx)'),
    setParameter: lib.func('size_t ZSTD_CCtx_setParameter(void *cctx, int param, int value)'),
    // `output` and `input` are the addresses of a ZSTD_outBuffer and a ZSTD_inBuffer (raw
    // bigints: koffi passes them as they are), which the call updates in place.
    compressStream2: lib.func('size_t ZSTD_compressStream2(void *cctx, void *output, void *input, int endOp)'),
    createDCtx: lib.func('void *ZSTD_createDCtx(void)'),
    freeDCtx: lib.func('size_t ZSTD_freeDCtx(void *dctx)'),
    decompressStream: lib.func('size_t ZSTD_decompressStream(void *dctx, void *output, void *input)'),
    isError: lib.func('unsigned int ZSTD_isError(size_t code)'),
    getErrorName: lib.func('const char *ZSTD_getErrorName(size_t code)'),
    compressBound: lib.func('size_t ZSTD_compressBound(size_t srcSize)'),
  } as unknown as Bindings;
  return bindings;
}

/** Whether libzstd loads here (a test skips what needs it where it does not). */
export function zstdAvailable(): boolean {
  try {
    zstd();
    return true;
  } catch (err) {
    // Only a library that is not there; a binding that does not fit it is a bug to see.
    if (err === loadError) return false;
    throw err;
  }
}

/** ZSTD_compressBound: the most a compression of `size` bytes can take. */
export function zstdCompressBound(size: number): number {
  return Number(zstd().compressBound(size));
}

/**
 * A ZSTD_inBuffer and a ZSTD_outBuffer in memory that never moves (an ArrayBuffer this
 * size lives outside V8's heap), with the buffers they point at kept alive beside them
 * for as long as a call may use them.
 */
class BufferPair {
  readonly #memory = new Uint8Array(128);
  readonly #view = new DataView(this.#memory.buffer);
  readonly output: bigint;
  readonly input: bigint;
  #held: Uint8Array[] = [];

  constructor() {
    const base = koffi.address(this.#memory);
    this.output = base;
    this.input = base + BigInt(BUFFER_STRUCT_BYTES);
  }

  set(output: Uint8Array, input: Uint8Array): void {
    this.#held = [output, input];
    this.#set(0, output);
    this.#set(BUFFER_STRUCT_BYTES, input);
  }

  #set(at: number, bytes: Uint8Array): void {
    this.#view.setBigUint64(at, bytes.byteLength === 0 ? 0n : koffi.address(bytes), true);
    this.#view.setBigUint64(at + 8, BigInt(bytes.byteLength), true);
    this.#view.setBigUint64(at + 16, 0n, true);
  }

  get outputPos(): number {
    return Number(this.#view.getBigUint64(16, true));
  }

  get inputPos(): number {
    return Number(this.#view.getBigUint64(BUFFER_STRUCT_BYTES + 16, true));
  }

  release(): void {
    this.#held = [];
  }
}

function call<A extends unknown[]>(fn: AsyncFn<A>, ...args: A): Promise<Code> {
  return new Promise((resolve, reject) => fn.async(...args, (err, result) => (err ? reject(err) : resolve(result))));
}

function errorOf(code: Code): string | undefined {
  const z = zstd();
  return z.isError(code) ? z.getErrorName(code) : undefined;
}

/** One zstd stream that goes on from packet to packet (QEMU: the channel's ZSTD_CStream). */
export class ZstdCompressStream {
  #cctx: unknown;
  readonly #buffers = new BufferPair();

  constructor(level: number) {
    const z = zstd();
    const cctx = z.createCCtx();
    if (cctx === null) throw new MigrationError('zstd: ZSTD_createCCtx failed (out of memory)');
    this.#cctx = cctx;
    const err = errorOf(z.setParameter(cctx, ZSTD_C_COMPRESSION_LEVEL, level));
    if (err !== undefined) {
      z.freeCCtx(cctx);
      this.#cctx = undefined;
      throw new MigrationError(`zstd: compression level ${level}: ${err}`);
    }
  }

  /**
   * `input`, all of it, flushed (ZSTD_e_flush) into `output`: returns how many bytes of
   * output it took. `output` must hold zstdCompressBound(input.byteLength).
   */
  async compress(input: Uint8Array, output: Uint8Array): Promise<number> {
    if (this.#cctx === undefined) throw new MigrationError('zstd: the stream was closed');
    const b = this.#buffers;
    b.set(output, input);
    try {
      for (;;) {
        const code = await call(zstd().compressStream2, this.#cctx, b.output, b.input, ZSTD_E_FLUSH);
        const err = errorOf(code);
        if (err !== undefined) throw new MigrationError(`zstd: compressing a packet failed: ${err}`);
        // 0: everything was taken and flushed; more: output full (cannot happen with a bound-sized output).
        if (Number(code) === 0) return b.outputPos;
        if (b.outputPos === output.byteLength) throw new MigrationError('zstd: a packet compressed to more than its bound');
      }
    } finally {
      b.release();
    }
  }

  close(): void {
    if (this.#cctx === undefined) return;
    zstd().freeCCtx(this.#cctx);
    this.#cctx = undefined;
  }
}

/** The receiving end of a ZstdCompressStream (QEMU: the channel's ZSTD_DStream). */
export class ZstdDecompressStream {
  #dctx: unknown;
  readonly #buffers = new BufferPair();

  constructor() {
    this.#dctx = zstd().createDCtx();
    if (this.#dctx === null) throw new MigrationError('zstd: ZSTD_createDCtx failed (out of memory)');
  }

  /**
   * Decompress all of `input` into `output`: returns the bytes written, at most
   * output.byteLength (a caller that gives one byte more than it expects learns of too
   * much). Throws with zstd's own words on a corrupt stream.
   */
  async decompress(input: Uint8Array, output: Uint8Array): Promise<number> {
    if (this.#dctx === undefined) throw new MigrationError('zstd: the stream was closed');
    const b = this.#buffers;
    b.set(output, input);
    try {
      for (;;) {
        const before = b.inputPos + b.outputPos;
        const code = await call(zstd().decompressStream, this.#dctx, b.output, b.input);
        const err = errorOf(code);
        if (err !== undefined) throw new MigrationError(err);
        if (b.inputPos === input.byteLength || b.outputPos === output.byteLength) return b.outputPos;
        if (b.inputPos + b.outputPos === before) throw new MigrationError('the stream went no further');
      }
    } finally {
      b.release();
    }
  }

  close(): void {
    if (this.#dctx === undefined) return;
    zstd().freeDCtx(this.#dctx);
    this.#dctx = undefined;
  }
}
