// Loaded with `node --import` ahead of a ferry process in tests: sets the V8 flags listed
// in FERRY_TEST_V8_FLAGS on the main thread. (Node refuses V8 flags on its command line
// for a process with worker threads: the workers inherit them and reject them.)

import { setFlagsFromString } from 'node:v8';
import { isMainThread } from 'node:worker_threads';

if (isMainThread) {
  for (const flag of (process.env['FERRY_TEST_V8_FLAGS'] ?? '').split(' ').filter(Boolean)) setFlagsFromString(flag);
}
