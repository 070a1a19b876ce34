import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ConsoleClient } from './console-client.js';

/** A console that answers "you said: LINE" to every line, like a shell echoing. */
async function echoConsole(path: string): Promise<net.Server> {
  const server = net.createServer((socket) => {
    socket.write('booted\n');
    let buffered = '';
    socket.on('data', (chunk) => {
      buffered += chunk.toString('latin1');
      for (let nl = buffered.indexOf('\n'); nl >= 0; nl = buffered.indexOf('\n')) {
        socket.write(`you said: ${buffered.slice(0, nl)}\n`);
        buffered = buffered.slice(nl + 1);
      }
    });
    socket.on('error', () => {});
  });
  await new Promise<void>((resolve) => server.listen(path, resolve));
  return server;
}

test('a console client waits for output, types, and consumes what each wait matched', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-console-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const path = join(dir, 'console.sock');
  const server = await echoConsole(path);
  t.after(() => new Promise<void>((r) => server.close(() => r())));
  const console = await ConsoleClient.connect(path);
  await console.waitFor(/booted/);
  console.type('one\n');
  console.type('two\n');
  assert.deepEqual([...(await console.waitFor(/you said: (\w+)/))].slice(1), ['one']);
  // The first match is consumed: the next wait finds the second answer, not the first again.
  assert.deepEqual([...(await console.waitFor(/you said: (\w+)/))].slice(1), ['two']);
  assert.match(console.output, /booted\nyou said: one\nyou said: two\n/);
  await assert.rejects(console.waitFor(/never printed/, 100), /timed out after 100 ms waiting for \/never printed\//);
  console.close();
});

test('waiting on a console that closes fails at once with the last output', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-console-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const path = join(dir, 'console.sock');
  const server = net.createServer((socket) => socket.end('goodbye\n'));
  await new Promise<void>((resolve) => server.listen(path, resolve));
  t.after(() => new Promise<void>((r) => server.close(() => r())));
  const console = await ConsoleClient.connect(path);
  await assert.rejects(console.waitFor(/heartbeat/, 10_000), /console closed before \/heartbeat\/ appeared; last output: "goodbye\\n"/);
});

test('connecting to a console nobody serves names the path', async () => {
  await assert.rejects(ConsoleClient.connect('/nonexistent/console.sock', 200), /Cannot connect to the console at \/nonexistent\/console.sock/);
});
