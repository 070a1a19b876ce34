// Keeps what a benchmark prints and writes it to bench/results/ when it ends, so every
// figure quoted from a run has its file — named after the benchmark and the minute it
// finished (UTC), as the README cites them.

import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const RESULTS_DIR = fileURLToPath(new URL('../../../bench/results/', import.meta.url));

/**
 * From now on, console.log's lines are also kept; the returned function writes them to
 * bench/results/NAME-YYYY-MM-DDTHH-MM.txt and returns the path.
 */
export function keepOutput(name: string): () => string {
  const lines: string[] = [];
  const log = console.log.bind(console);
  console.log = (...args: unknown[]): void => {
    lines.push(args.map((a) => (typeof a === 'string' ? a : String(a))).join(' '));
    log(...args);
  };
  return () => {
    const stamp = new Date().toISOString().slice(0, 16).replace(':', '-');
    mkdirSync(RESULTS_DIR, { recursive: true });
    const path = join(RESULTS_DIR, `${name}-${stamp}.txt`);
    writeFileSync(path, `${lines.join('\n')}\n`);
    return path;
  };
}
