// Keeps the last instance of each class on a migration's hot path alive, so that the
// optimised code the warm-up left behind stays valid until the real migration.
//
// V8 gives the objects of a class the same hidden class (map) by following a transition
// chain from the constructor's first map, one field at a time. A parent map holds its
// transitions weakly: once no instance of a class is left, a full garbage collection frees
// the chain's last maps, and every piece of optimised code that checks one of them is
// thrown away ("marking dependent code ... reason: weak objects" in --trace-deopt). Between
// the warm-up's last scratch migration and the real one there often is no instance of the
// stream reader, the chunk writer, the RAM loader...: traced, about one run in three lost
// the source's page loop and the reader's methods that way and compiled them again during
// the real migration (bench/NOTES.md: "The warm-up, measured"). Keeping one instance of each keeps
// the maps, and a new instance then gets the same one.
//
// The cost is one object per class and what it references, until the next instance of the
// class replaces it (the last migration's reader, writer and channel: a few MiB at most).

const kept = new Map<unknown, object>();

/** Call from a hot class's constructor with `this`. */
export function keepShape(instance: object): void {
  kept.set(instance.constructor, instance);
}

/** The classes that have an instance kept, by name (for tests). */
export function keptShapeNames(): string[] {
  return [...kept.keys()].map((c) => (c as { name?: string }).name ?? '?');
}
