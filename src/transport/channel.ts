// The one byte-stream type every transport produces and the migration engine consumes.
// It knows nothing of what flows through it (ARCHITECTURE.md: transport/).

export interface Channel {
  /** What the channel is connected to, for messages: "tcp:127.0.0.1:4444", "exec:cat > f". */
  readonly description: string;
  /**
   * True when whoever reads what this channel writes is whoever writes what it reads — a
   * connected socket — so a peer can answer (the `return-path` capability). Absent: no.
   */
  readonly duplex?: boolean;
  /**
   * True when the channel is a TLS session already: the transport made it one (tcp:,
   * unix: — Node's TLS straight on the socket), so the migration does not wrap it again.
   */
  readonly tls?: boolean;
  /**
   * The next chunk of bytes, or null at a clean end of stream. Rejects with a
   * TransportError when the peer broke the connection. The chunk is the caller's.
   */
  read(): Promise<Uint8Array | null>;
  /**
   * Optional: give back a chunk that read() returned, once the caller is done with it, so
   * the transport reads into that memory again instead of allocating (warm memory is far
   * cheaper to receive into). The caller must not touch the chunk afterwards.
   */
  release?(chunk: Uint8Array): void;
  /**
   * Optional: reads that put the next bytes of the stream wherever the caller says —
   * guest RAM, by address — instead of into the channel's own buffers (the destination's
   * side of vectored writes). Present where the channel reads a descriptor itself.
   */
  readonly scattered?: ScatteredReader;
  /**
   * Hand bytes to the channel. The channel owns `data` afterwards (the caller must not
   * change it). Resolves as soon as the channel can take more (at once below its
   * high-water mark, after the OS drained it otherwise); rejects if the peer is gone.
   * `done`, when given, is called once the channel no longer holds `data` (the OS has
   * it), so the caller may fill it again: a writer that reuses its buffers never pays
   * for fresh memory. A channel that cannot tell simply never calls it.
   */
  write(data: Uint8Array, done?: () => void): Promise<void>;
  /**
   * Optional: writes that splice memory of this process (guest RAM, by address) between
   * the caller's bytes, so the kernel copies it straight from there (QEMU's
   * qemu_put_buffer_async). Present where the channel can hand an iovec to the kernel.
   */
  readonly vectored?: VectoredWriter;
  /**
   * Optional: resolves once the OS has every byte written so far (a socket's or pipe's
   * buffer, a file), without closing anything: where a migration's downtime ends. end()
   * may then still wait for more (exec: the command's exit status).
   */
  drain?(): Promise<void>;
  /**
   * Optional: bytes written that the peer has not taken yet — still queued in this process
   * or in the socket's send queue (SIOCOUTQ: for a unix socket, the memory the kernel holds
   * for what the peer has not read, a little more than the bytes; for tcp, what the peer
   * has not acknowledged). Where the OS cannot tell, absent.
   */
  unsent?(): number;
  /**
   * Optional: hold what this end keeps received but unread to about `bytes` — the kernel's
   * receive queue and the channel's own read-ahead. Where present (a tcp socket), the
   * sender's unsent() cannot see what waits here: a receiver that takes its bytes slower
   * than they arrive (one decompressing them) keeps this small so that what is hidden
   * from the sender stays small.
   */
  holdReceived?(bytes: number): void;
  /** Flush everything written and close the sending side; resolves when flushed. */
  end(): Promise<void>;
  /** Tear the channel down now; pending reads and writes reject with `error` (or a closed error). */
  destroy(error?: Error): void;
}

/** A listening endpoint (destination side): yields the first connection. */
export interface Listener {
  readonly description: string;
  /** The address actually bound (e.g. the real port when 0 was asked). */
  readonly address: string;
  accept(): Promise<Channel>;
  close(): Promise<void>;
}

/**
 * One vectored write: `length` bytes of `buffer`, with `count` references spliced in —
 * reference i (`bytes[i]` bytes at address `address[i]`) goes right before byte `at[i]` of
 * the buffer (`at` never decreases; `at[i] === length` puts it at the end).
 */
export interface VectoredBatch {
  readonly buffer: Uint8Array;
  readonly length: number;
  readonly count: number;
  readonly at: Uint32Array;
  readonly address: Float64Array;
  readonly bytes: Uint32Array;
}

export interface VectoredWriter {
  /** The most references one batch may carry. */
  readonly maxRefs: number;
  /**
   * Send `batch` after everything written before, in order with write(). The typed arrays
   * are read before this returns and may be reused at once; `buffer` and the referenced
   * memory are read until the promise settles (`done` gives `buffer` back as write()'s
   * does). Referenced memory must stay mapped that long; what goes out is what it holds
   * when the kernel reads it. Resolves once the kernel has every byte — or, when the kernel
   * took every byte before this returned, is undefined (and `done` has run): most batches
   * go at once, and a promise for each, awaited by the sender, cost a turn of the microtask
   * queue and a few allocations per batch.
   */
  write(batch: VectoredBatch, done?: () => void): Promise<void> | undefined;
}

/**
 * Scattered reads (readv(2)) from a channel, in order with read(): usable only while
 * everything the channel received has been handed out by read() (`ready()`); from the
 * first scattered read until resume() the channel reads nothing on its own, so the bytes
 * a scattered read takes are the very next ones of the stream.
 */
export interface ScatteredReader {
  /** The most iovec entries one read may carry. */
  readonly maxEntries: number;
  /** The address of `view`'s first byte, for an iovec entry (its memory must not be on V8's heap: 64 bytes or more). */
  addressOf(view: Uint8Array): number;
  /** True when no received bytes wait for read() and the stream is open: a scattered read comes next. */
  ready(): boolean;
  /**
   * Read into the `count` struct iovec entries of `iov` (addresses of memory of this
   * process that stays mapped and writable until the promise settles) as many bytes as
   * have arrived, waiting for at least one. Resolves with the count, 0 at the end of the
   * stream; rejects with a TransportError when the connection fails.
   */
  read(iov: Uint8Array, count: number): Promise<number>;
  /** Let the channel read on its own again (after scattered reads; harmless otherwise). */
  resume(): void;
}
