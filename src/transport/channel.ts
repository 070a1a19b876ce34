// The one byte-stream type every transport produces and the migration engine consumes.
// It knows nothing of what flows through it (ARCHITECTURE.md: transport/).

export interface Channel {
  /** What the channel is connected to, for messages: "tcp:127.0.0.1:4444", "exec:cat > f". */
  readonly description: string;
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
   * Hand bytes to the channel. The channel owns `data` afterwards (the caller must not
   * change it). Resolves as soon as the channel can take more (at once below its
   * high-water mark, after the OS drained it otherwise); rejects if the peer is gone.
   * `done`, when given, is called once the channel no longer holds `data` (the OS has
   * it), so the caller may fill it again: a writer that reuses its buffers never pays
   * for fresh memory. A channel that cannot tell simply never calls it.
   */
  write(data: Uint8Array, done?: () => void): Promise<void>;
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
