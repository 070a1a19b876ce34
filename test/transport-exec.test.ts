// exec: end to end — `exec:cat > FILE` on the source and `exec:cat FILE` on the
// destination round-trip a stream; failing, missing and killed commands report their
// exit status and the tail of their stderr.

import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { TransportError } from '../src/errors.js';
import { connect, listen } from '../src/transport/index.js';
import { randomPayload, receiveAll, sendAll, sha256 } from '../src/transport/testing.js';

const MiB = 1024 * 1024;
const dir = mkdtempSync(join(tmpdir(), 'ferry-exec-'));
after(() => rmSync(dir, { recursive: true, force: true }));

test('exec: the source stream goes to the command\'s stdin (cat > FILE)', async () => {
  const file = join(dir, 'out.bin');
  const data = randomPayload(8 * MiB + 3);
  const source = await connect(`exec:cat > '${file}'`);
  assert.equal(source.description, `exec:cat > '${file}'`);
  await sendAll(source, data, 1 * MiB);
  // end() resolves only after the command exited, so the file is complete now.
  assert.equal(sha256(readFileSync(file)), sha256(data));
});

test('exec: the destination stream comes from the command\'s stdout (cat FILE)', async () => {
  const file = join(dir, 'in.bin');
  const data = randomPayload(8 * MiB + 9);
  writeFileSync(file, data);
  const listener = await listen(`exec:cat '${file}'`);
  assert.equal(listener.address, `exec:cat '${file}'`);
  const destination = await listener.accept();
  const received = await receiveAll(destination);
  assert.equal(received.bytes, data.byteLength);
  assert.equal(received.sha256, sha256(data));
  await listener.close();
});

test('exec: a source command that fails reports its status and stderr (through write or end)', async () => {
  const source = await connect('exec:echo "disk on fire" >&2; exit 3');
  const failure = await sendAll(source, randomPayload(4 * MiB)).then(
    () => null,
    (err: unknown) => err,
  );
  assert.ok(failure instanceof TransportError, `expected a TransportError, got ${String(failure)}`);
  assert.equal(failure.message, 'Command "echo \\"disk on fire\\" >&2; exit 3" exited with status 3: disk on fire');
  source.destroy();
});

test('exec: a source command that exits non-zero after reading everything fails end()', async () => {
  const source = await connect('exec:cat > /dev/null; echo "checksum mismatch" >&2; exit 2');
  await source.write(randomPayload(1 * MiB));
  await assert.rejects(source.end(), /exited with status 2: checksum mismatch$/);
});

test('exec: a destination command that fails turns the end of its output into an error', async () => {
  const listener = await listen('exec:printf partial; echo "no such snapshot" >&2; exit 5');
  const destination = await listener.accept();
  const first = await destination.read();
  assert.equal(new TextDecoder().decode(first!), 'partial');
  await assert.rejects(destination.read(), (err: unknown) => {
    assert.ok(err instanceof TransportError);
    assert.match(err.message, /exited with status 5: no such snapshot$/);
    return true;
  });
  await listener.close();
});

test('exec: a command that cannot be found exits 127 and says so', async () => {
  const listener = await listen('exec:ferry-no-such-command-xyz');
  const destination = await listener.accept();
  await assert.rejects(destination.read(), /exited with status 127: .*ferry-no-such-command-xyz.*not found/);
  await listener.close();
});

test('exec: a command killed by a signal is named as such, and destroy() stops a running one', async () => {
  const listener = await listen('exec:kill -9 $$');
  await assert.rejects((await listener.accept()).read(), /"kill -9 \$\$" was killed by SIGKILL/);
  await listener.close();

  const sleeper = await connect('exec:sleep 30');
  const pending = sleeper.read();
  sleeper.destroy();
  await assert.rejects(pending, /was closed/);
});

test('exec: the command runs under sh -c, so pipelines and redirections work', async () => {
  const file = join(dir, 'piped.bin');
  const data = randomPayload(2 * MiB);
  const source = await connect(`exec:gzip -1 | gzip -d > '${file}'`);
  await sendAll(source, data);
  assert.equal(sha256(readFileSync(file)), sha256(data));
});

test('exec: a shell that cannot be started is a TransportError naming the command', async () => {
  await assert.rejects(connect('exec:cat > /dev/null', { shell: '/nonexistent/sh' }), (err: unknown) => {
    assert.ok(err instanceof TransportError);
    assert.match(err.message, /^Cannot start exec:cat > \/dev\/null: spawn \/nonexistent\/sh ENOENT$/);
    return true;
  });
});
