// Runs a transpiled token plugin in Node:
//   node edge.mjs <transpiled.js> open <tenant> <token>
//   node edge.mjs <transpiled.js> seal <tenant> <stream-request JSON>
// Prints {"ok": ...} or {"err": ...} as one JSON line.
import { pathToFileURL } from 'node:url';

const [file, op, tenant, arg] = process.argv.slice(2);
const { token } = await import(pathToFileURL(file).href);

const toJson = (_key, value) => (typeof value === 'bigint' ? Number(value) : value);
let out;
try {
  if (op === 'open') {
    const request = { method: 'GET', path: '/stream', query: '', headers: [], clientAddr: '127.0.0.1:1', tenant };
    out = { ok: token.open(request, arg) };
  } else if (op === 'seal') {
    const req = JSON.parse(arg);
    const expiresAt = req.expires_at == null ? undefined : BigInt(req.expires_at);
    out = { ok: token.seal(tenant, { url: req.url, format: req.format, filename: req.filename ?? undefined, expiresAt }) };
  } else {
    throw new Error(`unknown op ${op}`);
  }
} catch (e) {
  if (e.payload === undefined) throw e; // a trap, not a result error
  out = { err: e.payload };
}
console.log(JSON.stringify(out, toJson));
