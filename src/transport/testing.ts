// Helpers the transport tests share: random payloads, hashing what a channel delivers,
// and running a Node child that speaks through this same transport module.

import { spawn, type ChildProcess, type StdioOptions } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import type { Channel } from './channel.js';

export function randomPayload(bytes: number): Uint8Array {
  return new Uint8Array(randomBytes(bytes));
}

export function sha256(data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}

/** Write `data` in `chunkSize` pieces (views, not copies), then end the channel. */
export async function sendAll(channel: Channel, data: Uint8Array, chunkSize = 256 * 1024): Promise<void> {
  for (let offset = 0; offset < data.byteLength; offset += chunkSize) {
    await channel.write(data.subarray(offset, Math.min(offset + chunkSize, data.byteLength)));
  }
  await channel.end();
}

/** Read to the end of the stream, releasing each chunk; the hash and length of everything received. */
export async function receiveAll(channel: Channel): Promise<{ bytes: number; sha256: string; chunks: number }> {
  const hash = createHash('sha256');
  let bytes = 0;
  let chunks = 0;
  for (;;) {
    const chunk = await channel.read();
    if (chunk === null) break;
    hash.update(chunk);
    bytes += chunk.byteLength;
    chunks++;
    // Released chunks are read into again: a pool bug would show up as a wrong hash.
    channel.release?.(chunk);
  }
  return { bytes, sha256: hash.digest('hex'), chunks };
}

/** URL of this transport module's entry point, for children to import. */
export const TRANSPORT_MODULE_URL = new URL('./index.js', import.meta.url).href;

/**
 * Run an ES module snippet in a child Node process. `transport` (this module's exports)
 * and `crypto` are in scope; extra descriptors go in `stdio`.
 */
export function spawnNodeChild(source: string, stdio: StdioOptions = ['ignore', 'pipe', 'pipe']): ChildProcess {
  const script =
    `import * as transport from ${JSON.stringify(TRANSPORT_MODULE_URL)};\n` +
    `import * as crypto from 'node:crypto';\n` +
    source;
  return spawn(process.execPath, ['--input-type=module', '-e', script], { stdio });
}

/** Collect a child's stdout and stderr and wait for it to exit. */
export function childResult(child: ChildProcess): Promise<{ code: number | null; signal: string | null; stdout: string; stderr: string }> {
  let stdout = '';
  let stderr = '';
  child.stdout?.setEncoding('utf8').on('data', (text: string) => (stdout += text));
  child.stderr?.setEncoding('utf8').on('data', (text: string) => (stderr += text));
  return new Promise((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code, signal) => resolve({ code, signal, stdout, stderr }));
  });
}
