// `--serial unix:PATH`: Ferry listens on a unix socket (QEMU's `unix:PATH,server,nowait`);
// every connected client sees the guest's output and may type to it, so
// `socat - UNIX-CONNECT:PATH` is a console. Output with no client connected is dropped.

import { createServer } from 'node:net';
import type { Server, Socket } from 'node:net';
import { lstatSync, unlinkSync } from 'node:fs';
import { ConfigError, errorMessage } from '../errors.js';
import type { CharBackend } from './char-backend.js';

/** Output held for one slow client before further output to it is dropped. */
const CLIENT_BACKLOG_MAX = 1024 * 1024;

export async function openUnixServerBackend(path: string): Promise<CharBackend> {
  removeStaleSocket(path);
  const clients = new Set<Socket>();
  let input: ((bytes: Uint8Array) => void) | undefined;
  const server: Server = createServer((socket) => {
    clients.add(socket);
    // A console client must not keep Ferry alive, nor the listening socket (the VM does).
    socket.unref();
    socket.on('data', (chunk: Buffer) => input?.(new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.byteLength)));
    socket.on('error', () => socket.destroy());
    socket.on('close', () => clients.delete(socket));
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err) => reject(new ConfigError(`Cannot listen on --serial unix:${path}: ${errorMessage(err)}`, { cause: err })));
    server.listen(path, () => resolve());
  });
  server.unref();
  let closed: Promise<void> | undefined;
  return {
    kind: 'unix',
    description: `unix:${path}`,
    write(bytes) {
      if (closed) return;
      for (const socket of clients) {
        if (socket.writableLength > CLIENT_BACKLOG_MAX) continue;
        socket.write(Uint8Array.prototype.slice.call(bytes));
      }
    },
    onInput(cb) {
      input = cb;
    },
    close() {
      closed ??= new Promise<void>((resolve) => {
        // Someone awaits this close: hold the loop open until it is done.
        server.ref();
        for (const socket of clients) {
          socket.ref();
          socket.end();
        }
        // end() lets queued output reach the clients; destroy whoever lingers.
        const linger = setTimeout(() => { for (const socket of clients) socket.destroy(); }, 500);
        server.close(() => {
          clearTimeout(linger);
          resolve();
        });
      });
      return closed;
    },
  };
}

/** A socket file left by an earlier run is replaced, as QEMU does; anything else is refused. */
function removeStaleSocket(path: string): void {
  let stat;
  try {
    stat = lstatSync(path);
  } catch {
    return;
  }
  if (!stat.isSocket()) {
    throw new ConfigError(`Cannot listen on --serial unix:${path}: the path exists and is not a socket`);
  }
  unlinkSync(path);
}
