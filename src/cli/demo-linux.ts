// `ferry demo --accel v86`: boots Debian's Linux kernel in the v86 emulator, types into
// its shell, live-migrates it to a second Ferry while its heartbeat runs, and keeps
// typing on the destination's console: same shell, same files, uptime still growing.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ConsoleClient } from './console-client.js';
import { FerryProcess } from './ferry-process.js';
import { destinationOutcome, formatSummary, runMigration } from './migrate-command.js';
import { forgetEvents, pausesWithoutSwitchover } from '../report/guest-pause.js';

const say = (text: string) => process.stdout.write(text + '\n');

export async function linuxDemo(opts: { memory?: number }): Promise<number> {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-linux-demo-'));
  const memoryMiB = Math.round((opts.memory ?? 128 * 1024 * 1024) / 1048576);
  const common = ['--accel', 'v86', '-m', `${memoryMiB}M`];
  const srcConsolePath = join(dir, 'source.console.sock');
  const dstConsolePath = join(dir, 'destination.console.sock');
  let source: FerryProcess | undefined;
  let dest: FerryProcess | undefined;
  const consoles: ConsoleClient[] = [];
  try {
    say(`Booting Debian's Linux kernel in the v86 emulator (${memoryMiB} MiB)…`);
    source = await FerryProcess.start({ dir, name: 'source', args: common, serial: `unix:${srcConsolePath}`, startTimeoutMs: 60_000 });
    const srcConsole = await ConsoleClient.connect(srcConsolePath);
    consoles.push(srcConsole);
    const first = await srcConsole.waitFor(/heartbeat (\d+)/, 120_000);
    say(`  the guest is up: ${first[0]}`);
    srcConsole.type('echo "written before the move at $(cut -d" " -f1 /proc/uptime)s" > /tmp/note; cat /tmp/note\n');
    const note = await srcConsole.waitFor(/written before the move at [\d.]+s/, 30_000);
    say(`  source shell: ${note[0]}`);

    say('Starting the destination (v86, waiting for the incoming migration)…');
    dest = await FerryProcess.start({ dir, name: 'destination', args: [...common, '--incoming', 'tcp:127.0.0.1:0'], serial: `unix:${dstConsolePath}`, startTimeoutMs: 60_000 });
    const dstConsole = await ConsoleClient.connect(dstConsolePath);
    consoles.push(dstConsole);
    const address = await dest.incomingAddress();
    const beat = [...srcConsole.output.matchAll(/heartbeat (\d+)/g)].pop()?.[1] ?? '?';
    say(`Migrating the running guest (heartbeat ${beat}) to ${address}…`);
    forgetEvents(source.qmp, dest.qmp);
    const outcome = await runMigration(source.qmp, { qmp: source.qmpPath, uri: address, maxBandwidth: 0 });
    // The guest's pause as its users saw it, beside the downtime QEMU's way of counting gives.
    say(formatSummary(outcome, await destinationOutcome(source.qmp, dest.qmp, outcome.status), pausesWithoutSwitchover(source.qmp)));
    if (outcome.status !== 'completed') return 1;

    const next = await dstConsole.waitFor(/heartbeat (\d+)/, 30_000);
    say(`Destination console: ${next[0]} — the heartbeat goes on from where it was, it did not restart.`);
    dstConsole.type('cat /tmp/note; cut -d" " -f1 /proc/uptime\n');
    const answer = await dstConsole.waitFor(/written before the move at [\d.]+s\s+([\d.]+)/, 30_000);
    say(`Destination shell: /tmp/note still says "${answer[0].split('\n')[0]!.trim()}", uptime now ${answer[1]}s.`);
    say(`Type into it yourself next time: ferry run --accel v86 --serial unix:/tmp/console.sock, then socat - UNIX-CONNECT:/tmp/console.sock`);
    return 0;
  } finally {
    for (const c of consoles) c.close();
    await source?.quit();
    await dest?.quit();
    rmSync(dir, { recursive: true, force: true });
  }
}
