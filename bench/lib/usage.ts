// A benchmark's command line, the same for each: --help prints the usage, and a bad flag
// gets its message and the usage (exit 2), not a stack trace.

import { parseArgs, type ParseArgsConfig } from 'node:util';

/** Handles --help now; returns the function that refuses a bad flag. */
export function benchUsage(name: string, usage: string): (message: string) => never {
  if (process.argv.includes('--help') || process.argv.includes('-h')) {
    console.log(usage);
    process.exit(0);
  }
  return (message: string): never => {
    console.error(`${name}: ${message}\n${usage}`);
    process.exit(2);
  };
}

/** parseArgs over the process's flags, an unknown or malformed one refused through `usageError`. */
export function parseBenchArgs<O extends NonNullable<ParseArgsConfig['options']>>(options: O, usageError: (message: string) => never) {
  try {
    return parseArgs({ options, strict: true, allowPositionals: false });
  } catch (err) {
    return usageError(err instanceof Error ? err.message : String(err));
  }
}
