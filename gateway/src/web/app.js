// The page's only script (CSP: script-src 'self', Trusted Types): it builds every element
// with DOM calls and sets text with textContent, so nothing the gateway or a media site
// returns is ever parsed as HTML.
'use strict';

const KEY_STORE = 'streamgate.api-key';
const $ = (id) => document.getElementById(id);
const body = document.body;
const keyHeader = body.dataset.keyHeader || 'x-api-key';

/** What to tell a person for each problem `code` (docs/config.md#statuses); the server's
 *  own `detail` follows it. */
const HINTS = {
  bad_url: 'That is not an address this service accepts.',
  bad_format: 'That format cannot be asked for.',
  bad_request: 'The request was not understood.',
  policy_denied: 'This service refused the request.',
  token_denied: 'The link was refused.',
  not_found: 'Nothing was found at that address.',
  unsupported_url: 'No video or audio was found at that address.',
  format_unavailable: 'That format is not available.',
  upstream_failed: 'The media site failed or could not be reached.',
  egress_denied: 'This service may not connect to that address.',
  too_large: 'The media is larger than this service allows.',
  timeout: 'The media site took too long to answer.',
  busy: 'The service is busy.',
  rate_limited: 'Too many requests.',
  limiter_unavailable: 'The service cannot take requests right now.',
  sidecar_unavailable: 'The service cannot fetch media right now.',
  unknown_host: 'This address serves no site.',
  payload_too_large: 'That address is too long.',
};

function say(text) {
  $('status').textContent = text;
}

/** Shows a problem in the alert region (announced at once by screen readers). */
function showProblem(lines) {
  const box = $('problem');
  box.replaceChildren(...lines.filter(Boolean).map((line, i) => {
    const p = document.createElement(i === 0 ? 'strong' : 'p');
    p.textContent = line;
    return p;
  }));
  box.hidden = false;
  say('');
}

function clearProblem() {
  $('problem').hidden = true;
  $('problem').replaceChildren();
}

/** The lines for an RFC 9457 problem (or any other failed answer). */
async function problemLines(resp) {
  let problem = null;
  if ((resp.headers.get('content-type') || '').includes('json')) {
    try { problem = await resp.json(); } catch { problem = null; }
  }
  if (!problem || typeof problem !== 'object') {
    return [`The service answered ${resp.status} ${resp.statusText}.`];
  }
  const code = String(problem.code || '');
  const lines = [HINTS[code] || `${problem.title || 'Error'} (${resp.status}).`];
  if (problem.detail) lines.push(String(problem.detail));
  const retry = resp.headers.get('retry-after');
  if (retry) lines.push(`Try again in ${retry} s.`);
  if (resp.status === 401) {
    showKeyField();
    lines.push($('key').value ? 'Check the API key below.' : 'Enter an API key below.');
  }
  lines.push(`Code ${code || resp.status}${problem.request_id ? `, request ${problem.request_id}` : ''}.`);
  return lines;
}

function showKeyField() {
  $('key-field').hidden = false;
}

function storedKey() {
  try { return sessionStorage.getItem(KEY_STORE) || ''; } catch { return ''; }
}

function storeKey(value) {
  try {
    if (value) sessionStorage.setItem(KEY_STORE, value);
    else sessionStorage.removeItem(KEY_STORE);
  } catch { /* storage disabled: the key lives in the field only */ }
}

function formatBytes(n) {
  if (typeof n !== 'number' || !Number.isFinite(n)) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}

function formatDuration(secs) {
  if (typeof secs !== 'number' || !Number.isFinite(secs)) return '';
  const s = Math.round(secs);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const r = String(s % 60).padStart(2, '0');
  return h ? `${h}:${String(m).padStart(2, '0')}:${r}` : `${m}:${r}`;
}

/** A codec yt-dlp reports, or nothing for `none`/unknown. */
function codec(value) {
  return value && value !== 'none' ? value : '';
}

function isAudioOnly(f) {
  return codec(f.acodec) && (f.vcodec === 'none' || f.resolution === 'audio only');
}

function cell(text, cls) {
  const td = document.createElement('td');
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

function row(f, label) {
  const tr = document.createElement('tr');
  const th = document.createElement('th');
  th.scope = 'row';
  th.textContent = label;
  tr.append(th);
  const codecs = [codec(f.vcodec), codec(f.acodec)].filter(Boolean).join(' + ');
  tr.append(cell(f.ext || '—'), cell(f.resolution || '—'), cell(codecs || '—'),
    cell(formatBytes(f.size), 'num'));
  const td = document.createElement('td');
  const actions = document.createElement('div');
  actions.className = 'actions';
  td.append(actions);
  const play = document.createElement('button');
  play.type = 'button';
  play.textContent = 'Play';
  play.setAttribute('aria-label', `Play format ${label}`);
  play.addEventListener('click', () => playFormat(f, label));
  const save = document.createElement('a');
  save.href = f.stream_url;
  save.download = '';
  save.className = 'button secondary';
  save.textContent = 'Download';
  save.setAttribute('aria-label', `Download format ${label}`);
  actions.append(play, save);
  tr.append(td);
  return tr;
}

function playFormat(f, label) {
  const audio = isAudioOnly(f);
  const [on, off] = audio ? [$('audio'), $('video')] : [$('video'), $('audio')];
  off.pause();
  off.removeAttribute('src');
  off.hidden = true;
  off.load();
  on.hidden = false;
  on.src = f.stream_url;
  $('player').hidden = false;
  $('now-playing').textContent = `Playing format ${label}.`;
  clearProblem();
  on.play().catch(() => { /* autoplay refused: the controls are there */ });
  on.focus();
}

function mediaFailed(event) {
  const el = event.target;
  if (!el.getAttribute('src')) return;
  const err = el.error;
  const why = {
    1: 'Playback was stopped.',
    2: 'The stream broke off (the link may have expired, or the media site failed).',
    3: 'The browser could not decode this format.',
    4: 'The browser cannot play this format (or the service refused it); try another one or download it.',
  }[err ? err.code : 0] || 'The media could not be played.';
  showProblem(['This format did not play.', why]);
}

function showResult(answer) {
  $('title').textContent = answer.title || 'Untitled media';
  const facts = [];
  const d = formatDuration(answer.duration);
  if (d) facts.push(`Duration ${d}`);
  const n = (answer.formats || []).length;
  facts.push(`${n} format${n === 1 ? '' : 's'}`);
  $('meta').textContent = facts.join(' · ');
  const thumb = $('thumb');
  // Only https thumbnails: the CSP allows no other remote images.
  if (typeof answer.thumbnail === 'string' && answer.thumbnail.startsWith('https://')) {
    thumb.src = answer.thumbnail;
    thumb.hidden = false;
  } else {
    thumb.removeAttribute('src');
    thumb.hidden = true;
  }
  const rows = [row({ ...answer, ext: '', resolution: '', size: null }, `${answer.format} (automatic)`)];
  for (const f of answer.formats || []) rows.push(row(f, f.id));
  $('formats').tBodies[0].replaceChildren(...rows);
  if (answer.expires_at) {
    const when = new Date(answer.expires_at * 1000);
    $('expires').textContent = `Links valid until ${when.toLocaleString()}.`;
  }
  for (const el of [$('video'), $('audio')]) {
    el.pause();
    el.removeAttribute('src');
    el.load();
  }
  $('player').hidden = true;
  $('result').hidden = false;
  $('title').focus();
}

async function resolve(event) {
  event.preventDefault();
  const url = $('url').value.trim();
  clearProblem();
  if (!url) {
    showProblem(['Paste a media address first.']);
    $('url').focus();
    return;
  }
  const key = $('key').value.trim();
  storeKey(key);
  const headers = { 'content-type': 'application/json', accept: 'application/json' };
  if (key) headers[keyHeader] = key;
  $('go').disabled = true;
  say('Looking for formats…');
  try {
    const resp = await fetch('/v1/resolve', {
      method: 'POST', headers, body: JSON.stringify({ url }), credentials: 'same-origin',
    });
    if (!resp.ok) {
      showProblem(await problemLines(resp));
      return;
    }
    const answer = await resp.json();
    const n = (answer.formats || []).length;
    say(`Found ${n} format${n === 1 ? '' : 's'}.`);
    showResult(answer);
  } catch (e) {
    showProblem(['The service could not be reached.', String(e && e.message || e)]);
  } finally {
    $('go').disabled = false;
  }
}

function init() {
  const key = storedKey();
  $('key').value = key;
  if (body.dataset.keyRequired === 'true' || key) showKeyField();
  $('resolve').addEventListener('submit', resolve);
  $('forget').addEventListener('click', () => {
    $('key').value = '';
    storeKey('');
    say('The API key was forgotten.');
    $('key').focus();
  });
  for (const el of [$('video'), $('audio')]) el.addEventListener('error', mediaFailed);
  const shared = new URLSearchParams(location.search).get('url');
  if (shared) $('url').value = shared;
}

init();
