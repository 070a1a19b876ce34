// A client for a guest's serial console served on a unix socket (`--serial unix:PATH`):
// reads what the guest prints, waits for a pattern, types commands. Used by the Linux
// demo and the tests that talk to a shell inside the guest.

import net from 'node:net';

export class ConsoleClient {
  private readonly socket: net.Socket;
  private text = '';
  private consumed = 0;
  private closed = false;
  private readonly listeners = new Set<() => void>();

  private constructor(socket: net.Socket) {
    this.socket = socket;
    socket.setEncoding('latin1');
    socket.on('data', (chunk: string) => {
      this.text += chunk;
      for (const l of [...this.listeners]) l();
    });
    socket.on('close', () => {
      this.closed = true;
      for (const l of [...this.listeners]) l();
    });
    socket.on('error', () => {
      // 'close' follows and reports it to waiters.
    });
  }

  static async connect(path: string, timeoutMs = 10_000): Promise<ConsoleClient> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        const socket = net.connect(path);
        await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
        return new ConsoleClient(socket);
      } catch (err) {
        if (Date.now() > deadline) throw new Error(`Cannot connect to the console at ${path}: ${(err as Error).message}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    }
  }

  /** Everything received so far. */
  get output(): string {
    return this.text;
  }

  /** Output received since the last `waitFor` match (or the start). */
  get unread(): string {
    return this.text.slice(this.consumed);
  }

  type(text: string): void {
    this.socket.write(text, 'latin1');
  }

  /** Resolves with the match once `pattern` appears in output not yet consumed by an earlier wait. */
  waitFor(pattern: RegExp, timeoutMs = 30_000): Promise<RegExpExecArray> {
    return new Promise((resolve, reject) => {
      const check = (): boolean => {
        const rest = this.text.slice(this.consumed);
        const match = pattern.exec(rest);
        if (match) {
          this.consumed += match.index + match[0].length;
          done();
          resolve(match);
          return true;
        }
        if (this.closed) {
          done();
          reject(new Error(`console closed before ${pattern} appeared; last output: ${JSON.stringify(rest.slice(-300))}`));
          return true;
        }
        return false;
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`timed out after ${timeoutMs} ms waiting for ${pattern}; last output: ${JSON.stringify(this.text.slice(-300))}`));
      }, timeoutMs);
      const listener = (): void => void check();
      const done = (): void => {
        clearTimeout(timer);
        this.listeners.delete(listener);
      };
      this.listeners.add(listener);
      check();
    });
  }

  close(): void {
    this.socket.destroy();
  }
}
