// Splits a QMP byte stream into JSON texts, the way QEMU's json-streamer does: a message
// ends where its outermost brace or bracket closes, so split, coalesced, CRLF-terminated
// and newline-less messages all frame the same. Parsing the text is the caller's job.

/** One framed piece of input: a complete JSON text, or input that cannot be one. */
export type Frame =
  | { readonly kind: 'message'; readonly text: string }
  /** Bytes that cannot form a JSON text (a stray '}', a raw newline inside a string, …). */
  | { readonly kind: 'invalid'; readonly text: string; readonly reason: string }
  /** The message in progress passed the size cap; the stream cannot be resynchronised safely. */
  | { readonly kind: 'oversized'; readonly size: number; readonly limit: number };

export interface FramerOptions {
  /** Largest message, in bytes, before the framer gives up on the stream. */
  readonly maxMessageBytes: number;
  /** Deepest nesting of objects and arrays accepted (QEMU's parser stops at 1024). */
  readonly maxDepth?: number;
}

export const DEFAULT_MAX_DEPTH = 1024;

const LF = 0x0a;
const CR = 0x0d;
const TAB = 0x09;
const SPACE = 0x20;
const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const OPEN_BRACE = 0x7b;
const CLOSE_BRACE = 0x7d;
const OPEN_BRACKET = 0x5b;
const CLOSE_BRACKET = 0x5d;

function isSpace(byte: number): boolean {
  return byte === SPACE || byte === LF || byte === CR || byte === TAB;
}

/**
 * A small explicit state machine. Between messages it skips whitespace; a message is
 * either a compound value (tracked by a stack of expected closers) or a top-level
 * scalar, which ends at whitespace or at the start of the next compound value. Every
 * byte is scanned once, however the input is chunked.
 */
export class JsonFramer {
  readonly #maxMessageBytes: number;
  readonly #maxDepth: number;
  /** Completed parts of the message in progress (earlier chunks). */
  #parts: Uint8Array[] = [];
  #partsBytes = 0;
  /** Expected closing bytes, innermost last; empty between messages and for scalars. */
  #closers: number[] = [];
  #inMessage = false;
  #inString = false;
  #escape = false;
  /** After an oversized message nothing more is framed. */
  #dead = false;
  readonly #decoder = new TextDecoder('utf-8', { fatal: false });

  constructor(options: FramerOptions) {
    this.#maxMessageBytes = options.maxMessageBytes;
    this.#maxDepth = options.maxDepth ?? DEFAULT_MAX_DEPTH;
  }

  /** Bytes held for the message in progress. */
  get pendingBytes(): number {
    return this.#partsBytes;
  }

  /** Feed one chunk; returns the frames it completed, in order. */
  push(chunk: Uint8Array): Frame[] {
    const frames: Frame[] = [];
    if (this.#dead) return frames;
    let start = 0; // where the current message begins inside this chunk
    for (let i = 0; i < chunk.length; i++) {
      const byte = chunk[i]!;
      if (!this.#inMessage) {
        if (isSpace(byte)) continue;
        this.#inMessage = true;
        start = i;
        if (byte === CLOSE_BRACE || byte === CLOSE_BRACKET) {
          frames.push(this.#finish(chunk, start, i + 1, `stray '${String.fromCharCode(byte)}'`));
          continue;
        }
        if (byte === OPEN_BRACE || byte === OPEN_BRACKET) {
          this.#closers.push(byte === OPEN_BRACE ? CLOSE_BRACE : CLOSE_BRACKET);
        } else if (byte === QUOTE) {
          this.#inString = true;
        }
        continue;
      }

      if (this.#inString) {
        if (this.#escape) {
          this.#escape = false;
        } else if (byte === BACKSLASH) {
          this.#escape = true;
        } else if (byte === QUOTE) {
          this.#inString = false;
          if (this.#closers.length === 0) frames.push(this.#finish(chunk, start, i + 1));
        } else if (byte < SPACE) {
          // JSON forbids raw control characters in strings; ending the message here
          // lets a client that forgot a quote recover at the next line.
          frames.push(this.#finish(chunk, start, i + 1, 'control character inside a string'));
        }
        continue;
      }

      if (this.#closers.length === 0) {
        // A top-level scalar: it ends at whitespace or where a compound value begins.
        if (isSpace(byte)) {
          frames.push(this.#finish(chunk, start, i));
        } else if (byte === OPEN_BRACE || byte === OPEN_BRACKET || byte === QUOTE ||
                   byte === CLOSE_BRACE || byte === CLOSE_BRACKET) {
          frames.push(this.#finish(chunk, start, i));
          i--; // frame this byte again as the start of the next message
        }
        continue;
      }

      if (byte === QUOTE) {
        this.#inString = true;
      } else if (byte === OPEN_BRACE || byte === OPEN_BRACKET) {
        if (this.#closers.length >= this.#maxDepth) {
          frames.push(this.#finish(chunk, start, i + 1, `nesting deeper than ${this.#maxDepth}`));
          continue;
        }
        this.#closers.push(byte === OPEN_BRACE ? CLOSE_BRACE : CLOSE_BRACKET);
      } else if (byte === CLOSE_BRACE || byte === CLOSE_BRACKET) {
        if (this.#closers.pop() !== byte) {
          frames.push(this.#finish(chunk, start, i + 1, `mismatched '${String.fromCharCode(byte)}'`));
        } else if (this.#closers.length === 0) {
          frames.push(this.#finish(chunk, start, i + 1));
        }
      }
    }

    if (this.#inMessage) {
      const rest = chunk.subarray(start);
      if (this.#partsBytes + rest.length > this.#maxMessageBytes) {
        const size = this.#partsBytes + rest.length;
        this.#reset();
        this.#dead = true;
        frames.push({ kind: 'oversized', size, limit: this.#maxMessageBytes });
        return frames;
      }
      // Copy: the caller may reuse its chunk buffer (the SCM_RIGHTS reader does).
      if (rest.length > 0) {
        this.#parts.push(rest.slice());
        this.#partsBytes += rest.length;
      }
    }
    return frames;
  }

  /**
   * The stream ended. A top-level scalar still open at the end is complete (e.g. `42`
   * with no newline); an unfinished compound value is simply dropped, as QEMU does.
   */
  end(): Frame[] {
    if (this.#dead || !this.#inMessage) return [];
    if (this.#closers.length === 0 && !this.#inString) {
      const text = this.#decoder.decode(concat(this.#parts, this.#partsBytes));
      this.#reset();
      return [{ kind: 'message', text }];
    }
    this.#reset();
    return [];
  }

  #finish(chunk: Uint8Array, start: number, end: number, invalidReason?: string): Frame {
    const tail = chunk.subarray(start, end);
    const size = this.#partsBytes + tail.length;
    const bytes = this.#parts.length === 0 ? tail : concat([...this.#parts, tail], size);
    const text = this.#decoder.decode(bytes);
    this.#reset();
    if (size > this.#maxMessageBytes) {
      this.#dead = true;
      return { kind: 'oversized', size, limit: this.#maxMessageBytes };
    }
    return invalidReason === undefined ? { kind: 'message', text } : { kind: 'invalid', text, reason: invalidReason };
  }

  #reset(): void {
    this.#parts = [];
    this.#partsBytes = 0;
    this.#closers = [];
    this.#inMessage = false;
    this.#inString = false;
    this.#escape = false;
  }
}

function concat(parts: readonly Uint8Array[], total: number): Uint8Array {
  const out = new Uint8Array(total);
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}
