// Assembles the built-in guests (src/guests/*.S) with GNU as + ld + objcopy into flat
// binaries under dist/guests/: sweep.bin (64-bit, loaded at CODE_ADDR by the VMM) and
// sweep-bootsector.bin (a 512-byte boot sector for QEMU), plus a test fixture. Run by `npm run build`.
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const outDir = join(root, 'dist', 'guests');

// Load addresses: CODE_ADDR in src/guests/layout.ts, and where a BIOS puts a boot sector.
const GUESTS = [
  { source: 'sweep.S', output: 'sweep.bin', asFlags: ['--64'], ldFlags: ['-m', 'elf_x86_64', '-Ttext=0x10000'], maxSize: 0x60000 - 0x10000 },
  { source: 'sweep-bootsector.S', output: 'sweep-bootsector.bin', asFlags: ['--32'], ldFlags: ['-m', 'elf_i386', '-Ttext=0x7c00'], exactSize: 512 },
  // Test fixture: runs the 64-bit guest under QEMU TCG the way Ferry enters it (long-mode-qemu.test.ts).
  { source: 'testing/long-mode-trampoline.S', output: 'long-mode-trampoline.bin', asFlags: ['--32'], ldFlags: ['-m', 'elf_i386', '-Ttext=0x7c00'], exactSize: 512 },
];

function run(tool, args) {
  const result = spawnSync(tool, args, { encoding: 'utf8' });
  if (result.error && result.error.code === 'ENOENT') {
    console.error(`build-guests: "${tool}" was not found. The built-in guests need GNU binutils: install it with \`apt-get install binutils\` (Debian/Ubuntu) and run \`npm run build\` again.`);
    process.exit(1);
  }
  if (result.error) throw result.error;
  if (result.status !== 0) {
    console.error(`build-guests: ${tool} ${args.join(' ')} failed (exit ${result.status}):\n${result.stderr}`);
    process.exit(1);
  }
}

mkdirSync(outDir, { recursive: true });
const work = mkdtempSync(join(tmpdir(), 'ferry-guests-'));
try {
  for (const guest of GUESTS) {
    const object = join(work, guest.output + '.o');
    const elf = join(work, guest.output + '.elf');
    const output = join(outDir, guest.output);
    run('as', [...guest.asFlags, '-o', object, join(root, 'src', 'guests', guest.source)]);
    run('ld', [...guest.ldFlags, '-e', '_start', '-o', elf, object]);
    run('objcopy', ['-O', 'binary', elf, output]);
    const size = statSync(output).size;
    if (guest.exactSize !== undefined && size !== guest.exactSize) {
      console.error(`build-guests: ${guest.output} is ${size} bytes, expected exactly ${guest.exactSize}`);
      process.exit(1);
    }
    if (guest.maxSize !== undefined && size > guest.maxSize) {
      console.error(`build-guests: ${guest.output} is ${size} bytes, more than the ${guest.maxSize} bytes reserved for guest code`);
      process.exit(1);
    }
    if (guest.exactSize === 512) {
      const bytes = readFileSync(output);
      if (bytes[510] !== 0x55 || bytes[511] !== 0xaa) {
        console.error(`build-guests: ${guest.output} lacks the 0x55 0xaa boot signature`);
        process.exit(1);
      }
    }
  }
} finally {
  rmSync(work, { recursive: true, force: true });
}
