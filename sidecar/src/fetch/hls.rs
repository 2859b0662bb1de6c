//! `m3u8_native`: an HLS media playlist moved by the sidecar. The playlist is checked whole
//! before the first byte ([`Playlist::parse`], a pure function), then its init sections and
//! segments are fetched in order through the job's [`Fetcher`] and relayed as they arrive,
//! AES-128 decrypted on the fly: the bytes yt-dlp's own HLS downloader writes to `-o -`,
//! none of them on disk. What this does not do (live and master playlists, SAMPLE-AES and
//! DRM, ad markers) is refused with [`FetchError::Unsupported`], and yt-dlp takes the job.

use std::time::Duration;

use aes::cipher::generic_array::GenericArray;
use aes::cipher::{BlockDecryptMut, KeyIvInit};
use bytes::{Buf, Bytes, BytesMut};
use futures::Stream;
use hyper::{Method, StatusCode};
use tracing::debug;
use url::Url;

use super::{FetchError, Fetcher, Response};
use crate::sniff::{Sniffed, by_ext};

/// A playlist is text: one larger than this is refused rather than buffered.
const MAX_PLAYLIST: usize = 8 * 1024 * 1024;
/// An AES-128 key is 16 bytes; a larger answer is not a key.
const MAX_KEY: usize = 64;
/// Attempts per segment (or key) after a failure.
const RETRIES: u32 = 5;

/// `len` bytes from `start` within a resource (`#EXT-X-BYTERANGE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub start: u64,
    pub len: u64,
}

/// How one resource is decrypted: AES-128-CBC with the key at `url`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Key {
    pub url: Url,
    pub iv: [u8; 16],
}

/// One resource of the output, in order: an init section (`#EXT-X-MAP`) or a media segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Piece {
    pub url: Url,
    pub range: Option<Span>,
    pub key: Option<Key>,
    pub init: bool,
}

/// A media playlist, checked whole. Its pieces are produced one at a time while the stream
/// runs ([`Playlist::pieces`]): a long VOD lists thousands, the text is smaller than them.
#[derive(Debug)]
pub struct Playlist {
    text: String,
    base: Url,
    segments: usize,
    /// Whether it has an init section: fragmented MP4 rather than MPEG-TS.
    fmp4: bool,
}

impl Playlist {
    /// Checks `text`, fetched from `base` (the URL after redirects, which relative URIs
    /// resolve against). `Err` says why the native path does not take it.
    pub fn parse(text: String, base: Url) -> Result<Playlist, String> {
        let first = text
            .lines()
            .next()
            .map(|l| l.trim_start_matches('\u{feff}').trim());
        if first != Some("#EXTM3U") {
            return Err("not an M3U8 playlist".into());
        }
        let mut parser = Parser::default();
        let (mut segments, mut fmp4) = (0, false);
        while let Some(piece) = parser.next(&text, &base) {
            let piece = piece?;
            fmp4 |= piece.init;
            segments += usize::from(!piece.init);
        }
        if !parser.endlist {
            return Err("no #EXT-X-ENDLIST: a live playlist".into());
        }
        if segments == 0 {
            return Err("a playlist without segments".into());
        }
        Ok(Playlist {
            text,
            base,
            segments,
            fmp4,
        })
    }

    /// How many media segments (init sections not counted) the playlist lists.
    pub fn segments(&self) -> usize {
        self.segments
    }

    /// The pieces in output order: each init section before the first segment that uses it.
    pub fn pieces(self) -> Pieces {
        Pieces {
            playlist: self,
            parser: Parser::default(),
        }
    }

    /// What the bytes will be, for an answer sent before any of them (HEAD): fragmented
    /// MP4 with an init section; else what the first segment's name says for packed audio;
    /// else MPEG-TS. A GET sniffs the bytes themselves.
    pub fn container(&self, audio_only: bool) -> Sniffed {
        if self.fmp4 {
            return by_ext("mp4", audio_only);
        }
        let first = Parser::default()
            .next(&self.text, &self.base)
            .and_then(Result::ok);
        let ext = first
            .as_ref()
            .and_then(|p| p.url.path().rsplit_once('.'))
            .map(|(_, ext)| ext.to_ascii_lowercase());
        match ext.as_deref() {
            Some(ext @ ("aac" | "mp3")) => by_ext(ext, audio_only),
            _ => by_ext("ts", audio_only),
        }
    }
}

/// [`Playlist::pieces`].
pub struct Pieces {
    playlist: Playlist,
    parser: Parser,
}

impl Iterator for Pieces {
    /// `Err` cannot happen after [`Playlist::parse`] accepted the same text.
    type Item = Result<Piece, String>;

    fn next(&mut self) -> Option<Self::Item> {
        self.parser.next(&self.playlist.text, &self.playlist.base)
    }
}

/// `#EXT-X-KEY` in effect: `iv: None` means the media sequence number.
#[derive(Clone, Debug)]
struct KeyTag {
    url: Url,
    iv: Option<[u8; 16]>,
}

impl KeyTag {
    fn at(&self, sequence: u64) -> Key {
        Key {
            url: self.url.clone(),
            iv: self
                .iv
                .unwrap_or_else(|| u128::from(sequence).to_be_bytes()),
        }
    }
}

/// `#EXT-X-MAP` in effect, with the key in effect where it stood.
#[derive(Clone, Debug)]
struct MapTag {
    url: Url,
    range: Option<Span>,
    key: Option<KeyTag>,
}

/// The playlist read line by line; tags change the state, URI lines become pieces. Tags
/// it does not know are skipped, as yt-dlp does.
#[derive(Debug, Default)]
struct Parser {
    /// Byte offset of the next line.
    pos: usize,
    sequence: u64,
    key: Option<KeyTag>,
    /// `#EXT-X-BYTERANGE` for the next segment.
    range: Option<Span>,
    /// Where a byte range without an offset starts: the end of the previous one.
    range_end: u64,
    map: Option<MapTag>,
    /// The init section sent last, so that it is sent again only when it changes.
    sent_map: Option<(Url, Option<Span>)>,
    /// A segment waiting behind the init section just returned.
    queued: Option<Piece>,
    endlist: bool,
}

impl Parser {
    fn next(&mut self, text: &str, base: &Url) -> Option<Result<Piece, String>> {
        if let Some(piece) = self.queued.take() {
            return Some(Ok(piece));
        }
        while self.pos < text.len() {
            let rest = &text[self.pos..];
            let (line, len) = match rest.find('\n') {
                Some(i) => (&rest[..i], i + 1),
                None => (rest, rest.len()),
            };
            self.pos += len;
            let line = line.trim();
            let step = if line.is_empty() {
                Ok(None)
            } else if line.starts_with('#') {
                self.tag(line, base).map(|()| None)
            } else {
                self.segment(line, base).map(Some)
            };
            match step {
                Ok(None) => {}
                Ok(Some(piece)) => return Some(Ok(piece)),
                Err(e) => {
                    self.pos = text.len();
                    return Some(Err(e));
                }
            }
        }
        None
    }

    fn tag(&mut self, line: &str, base: &Url) -> Result<(), String> {
        let (name, value) = line.split_once(':').unwrap_or((line, ""));
        match name {
            "#EXT-X-STREAM-INF" | "#EXT-X-I-FRAME-STREAM-INF" | "#EXT-X-MEDIA" => {
                return Err("a master playlist".into());
            }
            "#EXT-X-MEDIA-SEQUENCE" => {
                self.sequence = value
                    .trim()
                    .parse()
                    .map_err(|_| format!("{name}:{value}"))?;
            }
            "#EXT-X-ENDLIST" => self.endlist = true,
            "#EXT-X-BYTERANGE" => self.range = Some(span(value, self.range_end)?),
            "#EXT-X-KEY" => self.key = key_tag(value, base)?,
            "#EXT-X-MAP" => {
                let attrs = attributes(value)?;
                let uri = attr(&attrs, "URI").ok_or("#EXT-X-MAP without URI")?;
                let range = attr(&attrs, "BYTERANGE").map(|r| span(r, 0)).transpose()?;
                self.map = Some(MapTag {
                    url: resolve(base, uri)?,
                    range,
                    key: self.key.clone(),
                });
            }
            // DRM, and ads yt-dlp leaves out of its output.
            "#EXT-X-FAXS-CM" | "#ANVATO-SEGMENT-INFO" | "#UPLYNK-SEGMENT" => {
                return Err(format!("{name} is not supported"));
            }
            _ => {}
        }
        Ok(())
    }

    fn segment(&mut self, uri: &str, base: &Url) -> Result<Piece, String> {
        let sequence = self.sequence;
        self.sequence = self
            .sequence
            .checked_add(1)
            .ok_or("media sequence overflow")?;
        let range = self.range.take();
        if let Some(r) = range {
            self.range_end = r.start + r.len;
        }
        let segment = Piece {
            url: resolve(base, uri)?,
            range,
            key: self.key.as_ref().map(|k| k.at(sequence)),
            init: false,
        };
        let Some(map) = &self.map else {
            return Ok(segment);
        };
        let id = (map.url.clone(), map.range);
        if self.sent_map.as_ref() == Some(&id) {
            return Ok(segment);
        }
        let init = Piece {
            url: map.url.clone(),
            range: map.range,
            // RFC 8216 wants an IV for an encrypted init section; without one, the number of
            // the segment it precedes.
            key: map.key.as_ref().map(|k| k.at(sequence)),
            init: true,
        };
        self.sent_map = Some(id);
        self.queued = Some(segment);
        Ok(init)
    }
}

/// `#EXT-X-KEY`: AES-128 (identity key format) or NONE; anything else is SAMPLE-AES or DRM.
fn key_tag(value: &str, base: &Url) -> Result<Option<KeyTag>, String> {
    let attrs = attributes(value)?;
    match attr(&attrs, "METHOD") {
        Some("NONE") => return Ok(None),
        Some("AES-128") => {}
        other => return Err(format!("#EXT-X-KEY METHOD={}", other.unwrap_or("?"))),
    }
    if let Some(format) = attr(&attrs, "KEYFORMAT").filter(|f| *f != "identity") {
        return Err(format!("#EXT-X-KEY KEYFORMAT={format}"));
    }
    let uri = attr(&attrs, "URI").ok_or("#EXT-X-KEY without URI")?;
    let iv = attr(&attrs, "IV").map(parse_iv).transpose()?;
    Ok(Some(KeyTag {
        url: resolve(base, uri)?,
        iv,
    }))
}

/// `0x` and up to 32 hex digits, zero-extended on the left as yt-dlp does.
fn parse_iv(iv: &str) -> Result<[u8; 16], String> {
    let hex = iv
        .strip_prefix("0x")
        .or_else(|| iv.strip_prefix("0X"))
        .filter(|h| !h.is_empty() && h.len() <= 32)
        .ok_or_else(|| format!("IV {iv}"))?;
    u128::from_str_radix(hex, 16)
        .map(u128::to_be_bytes)
        .map_err(|_| format!("IV {iv}"))
}

/// `LEN[@OFFSET]`; without an offset the range starts at `from`.
fn span(value: &str, from: u64) -> Result<Span, String> {
    let bad = || format!("byte range {value}");
    let (len, start) = match value.trim().split_once('@') {
        Some((len, start)) => (len, start.parse().map_err(|_| bad())?),
        None => (value.trim(), from),
    };
    let len: u64 = len.parse().map_err(|_| bad())?;
    if len == 0 || start.checked_add(len).is_none() {
        return Err(bad());
    }
    Ok(Span { start, len })
}

/// A URI of the playlist, made absolute; only http(s) (no `data:`, no `skd:` DRM).
fn resolve(base: &Url, uri: &str) -> Result<Url, String> {
    let url = base.join(uri).map_err(|e| format!("URI {uri:?}: {e}"))?;
    match url.scheme() {
        "http" | "https" => Ok(url),
        scheme => Err(format!("a {scheme}: URI")),
    }
}

/// An attribute list: `NAME=value,NAME="quoted, value",…`.
fn attributes(list: &str) -> Result<Vec<(&str, &str)>, String> {
    let mut out = Vec::new();
    let mut rest = list.trim();
    while !rest.is_empty() {
        let (name, after) = rest
            .split_once('=')
            .ok_or_else(|| format!("attribute list {list:?}"))?;
        let (value, after) = match after.strip_prefix('"') {
            Some(quoted) => {
                let end = quoted
                    .find('"')
                    .ok_or_else(|| format!("attribute list {list:?}"))?;
                let after = quoted[end + 1..].trim_start();
                if !(after.is_empty() || after.starts_with(',')) {
                    return Err(format!("attribute list {list:?}"));
                }
                (&quoted[..end], after)
            }
            None => after.split_at(after.find(',').unwrap_or(after.len())),
        };
        out.push((name.trim(), value.trim()));
        rest = after.strip_prefix(',').unwrap_or(after).trim_start();
    }
    Ok(out)
}

fn attr<'a>(attrs: &[(&str, &'a str)], name: &str) -> Option<&'a str> {
    attrs.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
}

/// Fetches and checks the media playlist at `url`; one the native path does not take is
/// [`FetchError::Unsupported`].
pub async fn playlist(
    fetcher: &Fetcher,
    url: &Url,
    stall: Duration,
) -> Result<Playlist, FetchError> {
    let mut resp = fetcher.request(Method::GET, url, None).await?;
    if !resp.status.is_success() {
        return Err(FetchError::Status(resp.status));
    }
    let text = read_all(&mut resp, MAX_PLAYLIST, stall, "the playlist").await?;
    // yt-dlp decodes it as UTF-8, ignoring what is not.
    let text = String::from_utf8_lossy(&text).into_owned();
    Playlist::parse(text, resp.url.clone()).map_err(FetchError::Unsupported)
}

async fn read_all(
    resp: &mut Response,
    max: usize,
    stall: Duration,
    what: &str,
) -> Result<BytesMut, FetchError> {
    let mut all = BytesMut::new();
    loop {
        let data = tokio::time::timeout(stall, resp.data())
            .await
            .map_err(|_| FetchError::Stalled(stall))?;
        let Some(data) = data else { return Ok(all) };
        let data = data.map_err(FetchError::Http)?;
        if all.len() + data.len() > max {
            return Err(FetchError::Http(format!("{what} is over {max} bytes")));
        }
        all.extend_from_slice(&data);
    }
}

/// The playlist's bytes, in order, as they arrive; the first failure ends the stream.
pub fn fetch(
    playlist: Playlist,
    fetcher: Fetcher,
    stall: Duration,
) -> impl Stream<Item = Result<Bytes, FetchError>> + Send {
    let state = State {
        fetcher,
        pieces: playlist.pieces(),
        stall,
        key: None,
        current: None,
        done: false,
    };
    futures::stream::unfold(state, |mut state| async move {
        if state.done {
            return None;
        }
        match state.next().await {
            Ok(Some(bytes)) => Some((Ok(bytes), state)),
            Ok(None) => None,
            Err(e) => {
                state.done = true;
                Some((Err(e), state))
            }
        }
    })
}

struct State {
    fetcher: Fetcher,
    pieces: Pieces,
    stall: Duration,
    /// The last key fetched: keys rotate rarely, if at all.
    key: Option<(Url, [u8; 16])>,
    current: Option<Current>,
    done: bool,
}

impl State {
    /// The next bytes of the output; `None` after the last piece.
    async fn next(&mut self) -> Result<Option<Bytes>, FetchError> {
        loop {
            let current = match self.current.take() {
                Some(current) => current,
                None => {
                    let Some(piece) = self.pieces.next() else {
                        return Ok(None);
                    };
                    let piece = piece.map_err(FetchError::Unsupported)?;
                    let aes = match &piece.key {
                        Some(key) => Some(Decryptor::new(&self.key(&key.url).await?, &key.iv)),
                        None => None,
                    };
                    Current::new(piece, aes)
                }
            };
            let current = self.current.insert(current);
            let out = match current.next(&self.fetcher, self.stall).await? {
                Some(data) => match &mut current.aes {
                    Some(aes) => aes.update(&data),
                    None => data,
                },
                None => {
                    let done = self.current.take().and_then(|c| c.aes);
                    done.map(Decryptor::finish).transpose()?.unwrap_or_default()
                }
            };
            if !out.is_empty() {
                return Ok(Some(out));
            }
        }
    }

    async fn key(&mut self, url: &Url) -> Result<[u8; 16], FetchError> {
        if let Some((known, key)) = &self.key
            && known == url
        {
            return Ok(*key);
        }
        let mut tries = 0;
        let key = loop {
            match self.fetch_key(url).await {
                Ok(key) => break key,
                Err(e) if transient(&e) && tries < RETRIES => {
                    tries += 1;
                    debug!(%url, "key fetch failed, again: {e}");
                    tokio::time::sleep(backoff(tries)).await;
                }
                Err(e) => return Err(e),
            }
        };
        self.key = Some((url.clone(), key));
        Ok(key)
    }

    async fn fetch_key(&self, url: &Url) -> Result<[u8; 16], FetchError> {
        let mut resp = self.fetcher.request(Method::GET, url, None).await?;
        if !resp.status.is_success() {
            return Err(FetchError::Status(resp.status));
        }
        let key = read_all(&mut resp, MAX_KEY, self.stall, "the key").await?;
        <[u8; 16]>::try_from(&key[..])
            .map_err(|_| FetchError::Decrypt(format!("a key of {} bytes", key.len())))
    }
}

/// Failures worth another request: the connection, a stall, the origin's own error.
fn transient(e: &FetchError) -> bool {
    match e {
        FetchError::Http(_) | FetchError::Stalled(_) => true,
        FetchError::Status(s) => s.is_server_error(),
        _ => false,
    }
}

fn backoff(tries: u32) -> Duration {
    Duration::from_millis(200 * u64::from(tries))
}

/// The piece being fetched. A failure resumes at the byte it stopped at: a `Range` request
/// from there, or the whole resource again with the bytes already relayed skipped, so the
/// output is the same either way and a decryption goes on where it was.
struct Current {
    piece: Piece,
    /// Bytes of the piece received so far (ciphertext when encrypted).
    received: u64,
    /// The piece's length, once known: its byte range, or its resource's size.
    len: Option<u64>,
    body: Option<Response>,
    /// Bytes of `body` before the piece's next byte (an origin that ignored `Range`).
    skip: u64,
    aes: Option<Decryptor>,
    retries: u32,
}

impl Current {
    fn new(piece: Piece, aes: Option<Decryptor>) -> Current {
        Current {
            len: piece.range.map(|r| r.len),
            piece,
            received: 0,
            body: None,
            skip: 0,
            aes,
            retries: 0,
        }
    }

    /// The piece's next bytes as they arrive; `None` once it is whole.
    async fn next(
        &mut self,
        fetcher: &Fetcher,
        stall: Duration,
    ) -> Result<Option<Bytes>, FetchError> {
        loop {
            if self.len.is_some_and(|len| self.received >= len) {
                self.body = None;
                return Ok(None);
            }
            let Some(resp) = self.body.as_mut() else {
                match self.request(fetcher).await {
                    Ok(resp) => self.body = Some(resp),
                    Err(e) => self.retry(e).await?,
                }
                continue;
            };
            let failure = match tokio::time::timeout(stall, resp.data()).await {
                Ok(Some(Ok(mut data))) => {
                    let skipped = self.skip.min(data.len() as u64);
                    data.advance(skipped as usize);
                    self.skip -= skipped;
                    if let Some(len) = self.len {
                        data.truncate((len - self.received).min(data.len() as u64) as usize);
                    }
                    if data.is_empty() {
                        continue;
                    }
                    self.received += data.len() as u64;
                    self.retries = 0;
                    return Ok(Some(data));
                }
                Ok(None) if self.len.is_none() && self.skip == 0 => {
                    // A body of unannounced length ended: that was all of it.
                    self.body = None;
                    return Ok(None);
                }
                Ok(None) => FetchError::Http("the body ended early".into()),
                Ok(Some(Err(e))) => FetchError::Http(e),
                Err(_) => FetchError::Stalled(stall),
            };
            self.body = None;
            self.retry(failure).await?;
        }
    }

    /// Requests the piece from its next byte.
    async fn request(&mut self, fetcher: &Fetcher) -> Result<Response, FetchError> {
        let from = self.piece.range.map_or(0, |r| r.start) + self.received;
        let range = match (self.piece.range, self.received) {
            (Some(r), _) => Some(format!("bytes={from}-{}", r.start + r.len - 1)),
            (None, 0) => None,
            (None, _) => Some(format!("bytes={from}-")),
        };
        let resp = fetcher
            .request(Method::GET, &self.piece.url, range.as_deref())
            .await?;
        match resp.status {
            StatusCode::PARTIAL_CONTENT if range.is_some() => {
                let (start, _, size) = resp
                    .content_range()
                    .ok_or_else(|| FetchError::Http("206 without a usable Content-Range".into()))?;
                if start != from {
                    return Err(FetchError::Http("a range at the wrong offset".into()));
                }
                if self.piece.range.is_none() {
                    self.len = size.or(self.len);
                }
                self.skip = 0;
            }
            StatusCode::OK => {
                self.skip = from;
                if self.piece.range.is_none() {
                    self.len = resp.content_length();
                }
            }
            status if status.is_success() => {
                return Err(FetchError::Http(format!("unexpected {status}")));
            }
            status => return Err(FetchError::Status(status)),
        }
        Ok(resp)
    }

    /// Counts a failure: `Err` when it is not worth another try or the tries are spent.
    async fn retry(&mut self, e: FetchError) -> Result<(), FetchError> {
        self.retries += 1;
        if !transient(&e) || self.retries > RETRIES {
            return Err(e);
        }
        debug!(url = %self.piece.url, at = self.received, "segment failed, resuming: {e}");
        tokio::time::sleep(backoff(self.retries)).await;
        Ok(())
    }
}

/// AES-128-CBC decryption of one resource as its bytes arrive: whole blocks are decrypted
/// at once, the last one is held back until the end, where its PKCS#7 padding comes off.
/// At most 31 bytes wait here.
pub struct Decryptor {
    cbc: cbc::Decryptor<aes::Aes128>,
    pending: BytesMut,
}

impl Decryptor {
    pub fn new(key: &[u8; 16], iv: &[u8; 16]) -> Decryptor {
        Decryptor {
            cbc: cbc::Decryptor::new(key.into(), iv.into()),
            pending: BytesMut::new(),
        }
    }

    /// The plaintext `data` completes, short of the block that may be the last.
    pub fn update(&mut self, data: &[u8]) -> Bytes {
        self.pending.extend_from_slice(data);
        let whole = self.pending.len() / 16 * 16;
        // A partial block after the whole ones means more is coming: none of them is last.
        let ready = match self.pending.len() % 16 {
            0 => whole.saturating_sub(16),
            _ => whole,
        };
        let mut out = self.pending.split_to(ready);
        for block in out.chunks_exact_mut(16) {
            self.cbc
                .decrypt_block_mut(GenericArray::from_mut_slice(block));
        }
        out.freeze()
    }

    /// The last block, unpadded.
    pub fn finish(mut self) -> Result<Bytes, FetchError> {
        if self.pending.len() != 16 {
            return Err(FetchError::Decrypt(
                "the ciphertext is not a whole number of blocks".into(),
            ));
        }
        self.cbc
            .decrypt_block_mut(GenericArray::from_mut_slice(&mut self.pending));
        let pad = self.pending[15];
        let padding = self.pending.len().checked_sub(usize::from(pad));
        match padding {
            Some(keep) if pad > 0 && self.pending[keep..].iter().all(|b| *b == pad) => {
                self.pending.truncate(keep);
                Ok(self.pending.freeze())
            }
            _ => Err(FetchError::Decrypt("bad padding (a wrong key?)".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Url {
        Url::parse("https://cdn.test/vod/720p/index.m3u8?token=abc").unwrap()
    }

    fn pieces(text: &str) -> Vec<Piece> {
        Playlist::parse(text.to_owned(), base())
            .unwrap()
            .pieces()
            .map(Result::unwrap)
            .collect()
    }

    fn refused(text: &str) -> String {
        Playlist::parse(text.to_owned(), base()).unwrap_err()
    }

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn a_plain_vod_playlist() {
        let text = "#EXTM3U\r\n#EXT-X-VERSION:3\r\n#EXT-X-TARGETDURATION:6\r\n\
            #EXT-X-MEDIA-SEQUENCE:0\r\n#EXT-X-PLAYLIST-TYPE:VOD\r\n\
            #EXTINF:6.006,\r\nseg-0.ts\r\n#EXTINF:6.006,title\r\n  /abs/seg-1.ts  \r\n\
            #EXT-X-DISCONTINUITY\r\n#EXTINF:3.0,\r\nhttps://other.test/seg-2.ts?x=1\r\n\
            #EXT-X-ENDLIST\r\n";
        let got = pieces(text);
        let urls: Vec<&str> = got.iter().map(|p| p.url.as_str()).collect();
        assert_eq!(
            urls,
            [
                "https://cdn.test/vod/720p/seg-0.ts",
                "https://cdn.test/abs/seg-1.ts",
                "https://other.test/seg-2.ts?x=1",
            ]
        );
        assert!(
            got.iter()
                .all(|p| p.key.is_none() && p.range.is_none() && !p.init)
        );
        let playlist = Playlist::parse(text.to_owned(), base()).unwrap();
        assert_eq!(playlist.segments(), 3);
        assert_eq!(playlist.container(false).ext, "ts");
    }

    #[test]
    fn byte_ranges_continue_from_the_previous_segment() {
        let text = "#EXTM3U\n#EXT-X-TARGETDURATION:4\n#EXT-X-VERSION:4\n\
            #EXTINF:4,\n#EXT-X-BYTERANGE:1000@200\nmain.ts\n\
            #EXTINF:4,\n#EXT-X-BYTERANGE:500\nmain.ts\n\
            #EXTINF:4,\nwhole.ts\n\
            #EXTINF:4,\n#EXT-X-BYTERANGE:300\nmain.ts\n\
            #EXTINF:4,\n#EXT-X-BYTERANGE:10@0\nmain.ts\n#EXT-X-ENDLIST\n";
        let ranges: Vec<Option<Span>> = pieces(text).iter().map(|p| p.range).collect();
        let span = |start, len| Some(Span { start, len });
        assert_eq!(
            ranges,
            [
                span(200, 1000),
                span(1200, 500),
                None,
                span(1700, 300),
                span(0, 10)
            ]
        );
        assert!(
            refused("#EXTM3U\n#EXT-X-BYTERANGE:0@5\na.ts\n#EXT-X-ENDLIST\n").contains("byte range")
        );
        assert!(
            refused("#EXTM3U\n#EXT-X-BYTERANGE:x\na.ts\n#EXT-X-ENDLIST\n").contains("byte range")
        );
    }

    #[test]
    fn init_sections_come_once_and_again_when_they_change() {
        // ffmpeg's `-hls_segment_type fmp4 -hls_flags single_file`, then a new init section.
        let text = "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:2\n\
            #EXT-X-MEDIA-SEQUENCE:0\n#EXT-X-PLAYLIST-TYPE:VOD\n\
            #EXT-X-MAP:URI=\"index.m4s\",BYTERANGE=\"1354@0\"\n\
            #EXTINF:2.000000,\n#EXT-X-BYTERANGE:1102813@1354\nindex.m4s\n\
            #EXTINF:2.000000,\n#EXT-X-BYTERANGE:1062853\nindex.m4s\n\
            #EXT-X-DISCONTINUITY\n#EXT-X-MAP:URI=\"index.m4s\",BYTERANGE=\"1354@0\"\n\
            #EXTINF:2.000000,\n#EXT-X-BYTERANGE:1026300\nindex.m4s\n\
            #EXT-X-DISCONTINUITY\n#EXT-X-MAP:URI=\"other-init.mp4\"\n\
            #EXTINF:2.000000,\nother-1.m4s\n#EXT-X-ENDLIST\n";
        let got = pieces(text);
        let shape: Vec<(bool, &str, Option<Span>)> = got
            .iter()
            .map(|p| (p.init, p.url.path(), p.range))
            .collect();
        let (m4s, other) = ("/vod/720p/index.m4s", "/vod/720p/other-init.mp4");
        let span = |start, len| Some(Span { start, len });
        assert_eq!(
            shape,
            [
                (true, m4s, span(0, 1354)),
                (false, m4s, span(1354, 1102813)),
                (false, m4s, span(1104167, 1062853)),
                (false, m4s, span(2167020, 1026300)),
                (true, other, None),
                (false, "/vod/720p/other-1.m4s", None),
            ]
        );
        let playlist = Playlist::parse(text.to_owned(), base()).unwrap();
        assert_eq!(playlist.segments(), 4);
        assert_eq!(playlist.container(false).mime, "video/mp4");
        assert_eq!(playlist.container(true).mime, "audio/mp4");
    }

    #[test]
    fn keys_and_their_ivs() {
        let text = "#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXT-X-MEDIA-SEQUENCE:7\n\
            #EXT-X-KEY:METHOD=AES-128,URI=\"https://keys.test/k1?a=1,2\"\n\
            #EXTINF:10,\ns7.ts\n#EXTINF:10,\ns8.ts\n\
            #EXT-X-KEY:METHOD=AES-128,URI=\"k2.bin\",IV=0x1F\n#EXTINF:10,\ns9.ts\n\
            #EXT-X-KEY:METHOD=NONE\n#EXTINF:10,\ns10.ts\n\
            #EXT-X-KEY:METHOD=AES-128,URI=\"k3\",IV=0X000102030405060708090a0b0c0d0e0f,KEYFORMAT=\"identity\"\n\
            #EXTINF:10,\ns11.ts\n#EXT-X-ENDLIST\n";
        let keys: Vec<Option<Key>> = pieces(text).into_iter().map(|p| p.key).collect();
        let key = |u: &str, iv: u128| {
            Some(Key {
                url: url(u),
                iv: iv.to_be_bytes(),
            })
        };
        assert_eq!(
            keys,
            [
                key("https://keys.test/k1?a=1,2", 7),
                key("https://keys.test/k1?a=1,2", 8),
                key("https://cdn.test/vod/720p/k2.bin", 0x1f),
                None,
                key(
                    "https://cdn.test/vod/720p/k3",
                    0x000102030405060708090a0b0c0d0e0f
                ),
            ]
        );
    }

    #[test]
    fn an_encrypted_init_section_uses_the_key_where_the_map_stood() {
        let text = "#EXTM3U\n#EXT-X-MEDIA-SEQUENCE:3\n\
            #EXT-X-KEY:METHOD=AES-128,URI=\"k\",IV=0x01\n#EXT-X-MAP:URI=\"init.mp4\"\n\
            #EXT-X-KEY:METHOD=AES-128,URI=\"k\"\n#EXTINF:1,\na.m4s\n#EXT-X-ENDLIST\n";
        let got = pieces(text);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].key.as_ref().unwrap().iv, 1u128.to_be_bytes());
        assert_eq!(got[1].key.as_ref().unwrap().iv, 3u128.to_be_bytes());
    }

    #[test]
    fn what_the_native_path_refuses() {
        let cases = [
            ("#EXTM3U\n#EXTINF:1,\na.ts\n", "live"),
            ("#EXTM3U\n#EXT-X-ENDLIST\n", "without segments"),
            ("a.ts\n#EXT-X-ENDLIST\n", "not an M3U8"),
            (
                "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1280000\nlow.m3u8\n",
                "master",
            ),
            (
                "#EXTM3U\n#EXT-X-KEY:METHOD=SAMPLE-AES,URI=\"k\"\n#EXTINF:1,\na.ts\n#EXT-X-ENDLIST\n",
                "SAMPLE-AES",
            ),
            (
                "#EXTM3U\n#EXT-X-KEY:METHOD=AES-128,URI=\"skd://id\"\n#EXTINF:1,\na.ts\n#EXT-X-ENDLIST\n",
                "skd:",
            ),
            (
                "#EXTM3U\n#EXT-X-KEY:METHOD=AES-128,URI=\"k\",KEYFORMAT=\"com.apple.streamingkeydelivery\"\n\
                 #EXTINF:1,\na.ts\n#EXT-X-ENDLIST\n",
                "KEYFORMAT",
            ),
            (
                "#EXTM3U\n#EXT-X-KEY:METHOD=AES-128,URI=\"k\",IV=0xZZ\n#EXTINF:1,\na.ts\n#EXT-X-ENDLIST\n",
                "IV",
            ),
            (
                "#EXTM3U\n#EXT-X-KEY:METHOD=AES-128\n#EXTINF:1,\na.ts\n#EXT-X-ENDLIST\n",
                "without URI",
            ),
            (
                "#EXTM3U\n#EXTINF:1,\nfile:///etc/passwd\n#EXT-X-ENDLIST\n",
                "file:",
            ),
            (
                "#EXTM3U\n#UPLYNK-SEGMENT:x,00000000,ad\n#EXTINF:1,\nad.ts\n#EXT-X-ENDLIST\n",
                "UPLYNK",
            ),
            (
                "#EXTM3U\n#EXT-X-MEDIA-SEQUENCE:-1\n#EXT-X-ENDLIST\n",
                "SEQUENCE",
            ),
        ];
        for (text, why) in cases {
            let e = refused(text);
            assert!(e.contains(why), "{text:?}: {e}");
        }
    }

    #[test]
    fn attribute_lists() {
        let attrs = attributes("METHOD=AES-128, URI=\"a,b=c\" ,IV=0x1,X=\"\"").unwrap();
        assert_eq!(
            attrs,
            [
                ("METHOD", "AES-128"),
                ("URI", "a,b=c"),
                ("IV", "0x1"),
                ("X", "")
            ]
        );
        assert!(attributes("URI=\"open").is_err());
        assert!(attributes("URI=\"a\"b").is_err());
        assert!(attributes("NOVALUE").is_err());
    }

    /// NIST SP 800-38A F.2.2, CBC-AES128 decryption: four blocks, no padding, fed in
    /// pieces that cut through blocks; then the same plaintext PKCS#7-padded.
    #[test]
    fn aes_128_cbc_streams_block_by_block() {
        let hex = |s: &str| -> Vec<u8> {
            (0..s.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
                .collect()
        };
        let key: [u8; 16] = hex("2b7e151628aed2a6abf7158809cf4f3c").try_into().unwrap();
        let iv: [u8; 16] = hex("000102030405060708090a0b0c0d0e0f").try_into().unwrap();
        let ciphertext = hex(concat!(
            "7649abac8119b246cee98e9b12e9197d",
            "5086cb9b507219ee95db113a917678b2",
            "73bed6b8e3c1743b7116e69e22229516",
            "3ff1caa1681fac09120eca307586e1a7"
        ));
        let plaintext = hex(concat!(
            "6bc1bee22e409f96e93d7e117393172a",
            "ae2d8a571e03ac9c9eb76fac45af8e51",
            "30c81c46a35ce411e5fbc1191a0a52ef",
            "f69f2445df4f9b17ad2b417be66c3710"
        ));
        // The last block of this vector is not padding, so a 16-byte block of padding
        // (what an encoder adds to whole blocks) is appended, encrypted with `aes`.
        let mut padded = ciphertext.clone();
        {
            use aes::cipher::{BlockEncrypt, KeyInit};
            let cipher = aes::Aes128::new(&key.into());
            let mut block = [16u8; 16];
            for (b, c) in block.iter_mut().zip(&ciphertext[48..]) {
                *b ^= c;
            }
            let mut block = GenericArray::from(block);
            cipher.encrypt_block(&mut block);
            padded.extend_from_slice(&block);
        }
        for cut in [1, 5, 15, 16, 17, 31, 33, 80] {
            let mut aes = Decryptor::new(&key, &iv);
            let mut out = Vec::new();
            for piece in padded.chunks(cut) {
                out.extend_from_slice(&aes.update(piece));
                assert!(aes.pending.len() < 32);
            }
            out.extend_from_slice(&aes.finish().unwrap());
            assert_eq!(out, plaintext, "fed {cut} bytes at a time");
        }
        // Without the padding block, the vector's last byte (0x10) reads as a full block
        // of padding only if the whole block is 0x10: it is not, so this fails.
        let mut aes = Decryptor::new(&key, &iv);
        let _ = aes.update(&ciphertext);
        assert!(matches!(aes.finish(), Err(FetchError::Decrypt(_))));
        let mut aes = Decryptor::new(&key, &iv);
        let _ = aes.update(&padded[..70]);
        assert!(matches!(aes.finish(), Err(FetchError::Decrypt(_))));
    }
}
