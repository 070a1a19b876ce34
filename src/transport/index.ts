// What other folders import from transport/: the URI parser, connect/listen and the Channel types.

export type { Channel, Listener } from './channel.js';
export { connect, listen, type TransportOptions } from './transport.js';
export { parseMigrationUri, formatMigrationUri, type MigrationUri } from './uri.js';
export { DEFAULT_READ_HIGH_WATER_MARK, DEFAULT_WRITE_HIGH_WATER_MARK } from './stream-channel.js';
