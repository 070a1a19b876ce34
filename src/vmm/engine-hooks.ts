// The Node-side clock and scheduler every migration engine in this process gets (the
// engine itself has no node: imports). One function object each, shared by the VM's own
// Migration and the warm-up's scratch ones: the optimised code V8 builds around a call to
// one of them stays valid from a warm-up to the real migration.

/** Milliseconds, high resolution. */
export const engineNow = (): number => performance.now();

/** Run `fn` on a later turn of the event loop. */
export const engineSchedule = (fn: () => void): void => {
  setImmediate(fn);
};
