// QEMU's query-memdev and HMP `info memdev`: the memory backends, the one guest RAM comes
// from first — the implicit "pc.ram" of -m (QEMU 7.2 makes one for it too) or the one
// --machine memory-backend names — then any other made with -object.

import type { MemoryBackend } from './objects.js';

/** QEMU 7.2's Memdev, with the values its backends report where Ferry has no such knob. */
export interface Memdev {
  id: string;
  size: number;
  merge: boolean;
  dump: boolean;
  prealloc: boolean;
  share: boolean;
  reserve: boolean;
  'host-nodes': number[];
  policy: 'default';
}

function memdev(id: string, size: number, prealloc: boolean, share: boolean): Memdev {
  return { id, size, merge: true, dump: true, prealloc, share, reserve: true, 'host-nodes': [], policy: 'default' };
}

/**
 * The machine's RAM (`ram`: its backend's id and share=, or none for -m's pc.ram) and
 * the other memory backend objects.
 */
export function memdevList(ram: { size: number; prealloc: boolean; backend?: { id: string; share: boolean } }, others: readonly MemoryBackend[]): Memdev[] {
  const first = memdev(ram.backend?.id ?? 'pc.ram', ram.size, ram.prealloc, ram.backend?.share ?? false);
  return [first, ...others.filter((o) => o.id !== first.id).map((o) => memdev(o.id, o.size, o.prealloc, o.share))];
}

/** hmp_info_memdev's text: each backend's lines, then one blank line after them all. */
export function formatMemdev(list: readonly Memdev[]): string {
  return `${list.map((m) => [
    `memory backend: ${m.id}`,
    `  size:  ${m.size}`,
    `  merge: ${m.merge}`,
    `  dump: ${m.dump}`,
    `  prealloc: ${m.prealloc}`,
    `  share: ${m.share}`,
    `  reserve: ${m.reserve}`,
    `  policy: ${m.policy}`,
    `  host nodes: ${m['host-nodes'].join(' ')}`,
    '',
  ].join('\n')).join('')}\n`;
}
