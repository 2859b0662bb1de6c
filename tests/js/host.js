// The host side of `streamgate:plugin@0.1.0` for Node: what the gateway gives a plugin,
// in a few lines. Config comes as JSON in STREAMGATE_PLUGIN_CONFIG.
const settings = JSON.parse(process.env.STREAMGATE_PLUGIN_CONFIG ?? '{}');

export const config = { get: (key) => settings[key] }; // undefined = none
export const log = { log: (level, message) => console.error(`[plugin ${level}] ${message}`) };
export const clock = { now: () => BigInt(Math.floor(Date.now() / 1000)) };
