// A Channel over a descriptor that is not a socket or pipe — a regular file or a character
// device handed over as fd:N — using positionless fs.read/fs.write (the fd's own offset),
// with writes queued behind a high-water mark like a socket's.

import { close, read, write } from 'node:fs';
import { TransportError } from '../errors.js';
import type { Channel } from './channel.js';
import { toTransportError } from './errors.js';
import { READ_BUFFER_SIZE, ReadBufferPool } from './read-pool.js';
import { DEFAULT_WRITE_HIGH_WATER_MARK } from './stream-channel.js';

interface Waiter {
  resolve(): void;
  reject(error: Error): void;
}

export class FileChannel implements Channel {
  readonly description: string;
  readonly #fd: number;
  readonly #highWaterMark: number;
  // One fs.read per buffer: large enough that the thread-pool round trip is amortized.
  readonly #pool = new ReadBufferPool(READ_BUFFER_SIZE);

  #queue: Uint8Array[] = [];
  #queuedBytes = 0;
  #writing = false;
  #spaceWaiters: Waiter[] = [];
  #flushWaiters: Waiter[] = [];
  #ending = false;
  #endPromise: Promise<void> | null = null;

  #reading = false;
  #eof = false;

  #error: Error | null = null;
  #destroyed = false;
  #closed = false;

  constructor(fd: number, description: string, options: { writeHighWaterMark?: number } = {}) {
    this.#fd = fd;
    this.description = description;
    this.#highWaterMark = options.writeHighWaterMark ?? DEFAULT_WRITE_HIGH_WATER_MARK;
  }

  read(): Promise<Uint8Array | null> {
    if (this.#error) return Promise.reject(this.#error);
    if (this.#eof) return Promise.resolve(null);
    if (this.#reading) {
      return Promise.reject(new TransportError(`Cannot read from ${this.description}: another read() is still pending`));
    }
    this.#reading = true;
    const buffer = this.#pool.take();
    return new Promise((resolve, reject) => {
      read(this.#fd, buffer, 0, buffer.byteLength, null, (err, bytesRead) => {
        this.#reading = false;
        if (this.#error) {
          if (this.#destroyed && !this.#writing) void this.#close().catch(() => {});
          return reject(this.#error);
        }
        if (err) {
          this.#fail(toTransportError(err, this.description, 'reading from'));
          return reject(this.#error);
        }
        if (bytesRead === 0) {
          this.#pool.release(buffer);
          this.#eof = true;
          return resolve(null);
        }
        // A short read keeps a view, not a copy: the rest of the buffer is simply unused.
        resolve(bytesRead === buffer.byteLength ? buffer : buffer.subarray(0, bytesRead));
      });
    });
  }

  release(chunk: Uint8Array): void {
    this.#pool.release(chunk);
  }

  write(data: Uint8Array): Promise<void> {
    if (this.#error) return Promise.reject(this.#error);
    if (this.#ending) {
      return Promise.reject(new TransportError(`Cannot write to ${this.description}: its sending side is closed`));
    }
    if (data.byteLength > 0) {
      this.#queue.push(data);
      this.#queuedBytes += data.byteLength;
      this.#pump();
    }
    if (this.#queuedBytes < this.#highWaterMark) return Promise.resolve();
    return new Promise((resolve, reject) => this.#spaceWaiters.push({ resolve, reject }));
  }

  drain(): Promise<void> {
    if (this.#error) return Promise.reject(this.#error);
    if (this.#queue.length === 0 && !this.#writing) return Promise.resolve();
    return new Promise<void>((resolve, reject) => this.#flushWaiters.push({ resolve, reject }));
  }

  end(): Promise<void> {
    if (this.#endPromise) return this.#endPromise;
    if (this.#error) return Promise.reject(this.#error);
    this.#ending = true;
    this.#endPromise = new Promise<void>((resolve, reject) => {
      if (this.#queue.length === 0 && !this.#writing) resolve();
      else this.#flushWaiters.push({ resolve, reject });
    }).then(() => this.#close());
    this.#endPromise.catch(() => {});
    return this.#endPromise;
  }

  destroy(error?: Error): void {
    if (this.#destroyed || this.#closed) return;
    this.#destroyed = true;
    this.#fail(error ?? new TransportError(`${this.description} was closed`));
    this.#queue = [];
    this.#queuedBytes = 0;
    // An fs.read/fs.write still in the thread pool would race a close: close once it returns.
    if (!this.#writing && !this.#reading) void this.#close().catch(() => {});
  }

  #pump(): void {
    if (this.#writing || this.#error) return;
    const chunk = this.#queue[0];
    if (!chunk) {
      const flushWaiters = this.#flushWaiters;
      this.#flushWaiters = [];
      for (const waiter of flushWaiters) waiter.resolve();
      return;
    }
    this.#writing = true;
    write(this.#fd, chunk, 0, chunk.byteLength, null, (err, written) => {
      this.#writing = false;
      if (this.#error) {
        if (this.#destroyed && !this.#reading) void this.#close().catch(() => {});
        return;
      }
      if (err) {
        this.#fail(toTransportError(err, this.description, 'writing to'));
        return;
      }
      if (written < chunk.byteLength) this.#queue[0] = chunk.subarray(written);
      else this.#queue.shift();
      this.#queuedBytes -= written;
      if (this.#queuedBytes < this.#highWaterMark) {
        const spaceWaiters = this.#spaceWaiters;
        this.#spaceWaiters = [];
        for (const waiter of spaceWaiters) waiter.resolve();
      }
      this.#pump();
    });
  }

  #close(): Promise<void> {
    if (this.#closed) return Promise.resolve();
    this.#closed = true;
    return new Promise((resolve, reject) => {
      close(this.#fd, (err) => {
        if (err) reject(toTransportError(err, this.description, 'closing'));
        else resolve();
      });
    });
  }

  #fail(error: Error): void {
    if (!this.#error) this.#error = error;
    const waiters = [...this.#spaceWaiters, ...this.#flushWaiters];
    this.#spaceWaiters = [];
    this.#flushWaiters = [];
    for (const waiter of waiters) waiter.reject(this.#error);
  }
}
