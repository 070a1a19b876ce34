// Ferry's version, reported by --version and in the QMP greeting.
export const FERRY_VERSION = '0.1.0';
export const FERRY_VERSION_PARTS = { major: 0, minor: 1, micro: 0 } as const;
