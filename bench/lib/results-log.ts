// Keeps what a benchmark prints and writes it to bench/results/ when it ends, so every
// figure quoted from a run has its file — named after the benchmark and the minute it
// finished (UTC), as the README cites them.

import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const RESULTS_DIR = fileURLToPath(new URL('../../../bench/results/', import.meta.url));

/**
 * From now on, console.log's lines are also kept; the returned function writes them to
 * bench/results/NAME-YYYY-MM-DDTHH-MM.txt (-SS added when that file exists) and returns the path.
 */
export function keepOutput(name: string, dir: string = RESULTS_DIR): () => string {
  const lines: string[] = [];
  const log = console.log.bind(console);
  console.log = (...args: unknown[]): void => {
    lines.push(args.map((a) => (typeof a === 'string' ? a : String(a))).join(' '));
    log(...args);
  };
  return () => {
    const iso = new Date().toISOString();
    const minute = iso.slice(0, 16).replace(':', '-');
    mkdirSync(dir, { recursive: true });
    // Never over another run's file: two runs that end in the same minute (one cell run
    // again right after the table) get the second too, then a count.
    const stamps = [minute, `${minute}-${iso.slice(17, 19)}`];
    for (let attempt = 0; ; attempt++) {
      const stamp = attempt < stamps.length ? stamps[attempt]! : `${stamps[1]}-${attempt}`;
      const path = join(dir, `${name}-${stamp}.txt`);
      try {
        writeFileSync(path, `${lines.join('\n')}\n`, { flag: 'wx' });
        return path;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      }
    }
  };
}
