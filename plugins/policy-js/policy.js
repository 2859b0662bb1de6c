// policy-js: a streamgate policy plugin in JavaScript (world `policy-plugin`,
// streamgate:plugin@0.1.0), built into a component by componentize-js (SpiderMonkey).
//
// Lets a request through when it carries one of the tenant's API keys and its URL's host is
// on the tenant's list. Config (strings, from the tenant's `policy.config`):
// - `api_keys`: comma-separated keys; required (without one, every request is refused).
// - `api_key_header`: the header that carries the key; default `x-api-key`.
// - `hosts`: comma-separated hosts: `example.com` (exactly), `*.example.com` (any
//   subdomain). Unset: no host is allowed.
//
// The gateway makes a fresh instance for every call: keep no state between calls.

import { get } from 'streamgate:plugin/config@0.1.0';
import { log } from 'streamgate:plugin/log@0.1.0';

/** A comma-separated setting as a list of trimmed, non-empty entries. */
function list(key) {
  return (get(key) ?? '')
    .split(',')
    .map((entry) => entry.trim())
    .filter((entry) => entry !== '');
}

function deny(status, reason) {
  log('info', `denied (${status}): ${reason}`);
  return { tag: 'deny', val: { status, reason } };
}

/** Compares every character whatever the first difference, so the time taken does not
 * tell how much of a guessed key is right. */
function sameKey(given, key) {
  let diff = given.length ^ key.length;
  for (let i = 0; i < key.length; i++) {
    diff |= given.charCodeAt(i % Math.max(given.length, 1)) ^ key.charCodeAt(i);
  }
  return diff === 0;
}

function hostAllowed(host, patterns) {
  return patterns.some((pattern) => {
    const p = pattern.toLowerCase().replace(/\.$/, '');
    return p.startsWith('*.') ? host.endsWith(p.slice(1)) && host.length > p.length - 1 : host === p;
  });
}

export const policy = {
  check(request, wanted) {
    const keys = list('api_keys');
    if (keys.length === 0) {
      log('error', 'api_keys is not set: every request is refused');
      return deny(403, 'this tenant accepts no API key');
    }
    const header = (get('api_key_header') ?? 'x-api-key').toLowerCase();
    const given = request.headers.find(([name]) => name === header)?.[1];
    if (given === undefined) {
      return deny(401, `missing API key (header ${header})`);
    }
    // Every key is compared, so the time taken does not tell which one was close.
    if (!keys.map((key) => sameKey(given, key)).includes(true)) {
      return deny(401, 'invalid API key');
    }

    let url;
    try {
      url = new URL(wanted.url);
    } catch {
      return deny(400, 'not a valid URL');
    }
    if (url.protocol !== 'http:' && url.protocol !== 'https:') {
      return deny(400, 'only http and https URLs are allowed');
    }
    const host = url.hostname.replace(/\.$/, '');
    if (!hostAllowed(host, list('hosts'))) {
      return deny(403, `host ${host} is not allowed`);
    }
    log('debug', `allowed ${host}`);
    return { tag: 'allow', val: {} };
  },
};
