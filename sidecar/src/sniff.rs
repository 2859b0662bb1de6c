//! Container detection from the first bytes actually emitted. yt-dlp's `ext` is what it
//! intended, not what came out: a "merge to mp4" on stdout is MPEG-TS, HLS is TS too.

/// Container of a byte stream, as sent in the metadata frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sniffed {
    /// File extension without the dot.
    pub ext: &'static str,
    /// MIME type.
    pub mime: &'static str,
}

const fn s(ext: &'static str, mime: &'static str) -> Sniffed {
    Sniffed { ext, mime }
}

/// Identifies the container from `head` (the first chunk; more bytes, better answers).
/// `audio_only` is yt-dlp's own hint (`vcodec == "none"`), used only where the bytes cannot
/// tell (a WebM's tracks, an MP4 whose `moov` is not in `head`).
pub fn sniff(head: &[u8], audio_only: bool) -> Sniffed {
    let at = |offset: usize, magic: &[u8]| head.get(offset..offset + magic.len()) == Some(magic);
    if at(4, b"ftyp") || at(4, b"styp") || at(4, b"moov") {
        return mp4(head, audio_only);
    }
    if is_mpeg_ts(head) {
        return s("ts", "video/mp2t");
    }
    if at(0, &[0x1a, 0x45, 0xdf, 0xa3]) {
        let doc = &head[..head.len().min(64)];
        return match (contains(doc, b"webm"), audio_only) {
            (true, true) => s("webm", "audio/webm"),
            (true, false) => s("webm", "video/webm"),
            (false, true) => s("mka", "audio/x-matroska"),
            (false, false) => s("mkv", "video/x-matroska"),
        };
    }
    if at(0, b"OggS") {
        return if contains(head, b"OpusHead") {
            s("opus", "audio/ogg")
        } else if contains(head, b"theora") {
            s("ogv", "video/ogg")
        } else {
            s("ogg", "audio/ogg")
        };
    }
    if at(0, b"fLaC") {
        return s("flac", "audio/flac");
    }
    if at(0, b"RIFF") && at(8, b"WAVE") {
        return s("wav", "audio/wav");
    }
    if at(0, b"RIFF") && at(8, b"AVI ") {
        return s("avi", "video/x-msvideo");
    }
    if at(0, b"FLV") {
        return s("flv", "video/x-flv");
    }
    if at(0, b"ID3") {
        return s("mp3", "audio/mpeg");
    }
    if let [0xff, b1, ..] = head {
        // Frame sync: 11 set bits. Layer bits 00 is AAC in ADTS, anything else MPEG audio.
        if b1 & 0xe0 == 0xe0 {
            return if b1 & 0x06 == 0 {
                s("aac", "audio/aac")
            } else {
                s("mp3", "audio/mpeg")
            };
        }
    }
    s("bin", "application/octet-stream")
}

/// The container a single file's extension names, for answers that carry no first bytes
/// (a HEAD, a range from the middle): such a file is sent exactly as stored.
pub fn by_ext(ext: &str, audio_only: bool) -> Sniffed {
    match (ext, audio_only) {
        ("mp4", false) => s("mp4", "video/mp4"),
        ("mp4", true) | ("m4a", _) => s("m4a", "audio/mp4"),
        ("webm", false) => s("webm", "video/webm"),
        ("webm", true) => s("webm", "audio/webm"),
        ("mkv", _) => s("mkv", "video/x-matroska"),
        ("mka", _) => s("mka", "audio/x-matroska"),
        ("ogg" | "oga", _) => s("ogg", "audio/ogg"),
        ("opus", _) => s("opus", "audio/ogg"),
        ("ogv", _) => s("ogv", "video/ogg"),
        ("flac", _) => s("flac", "audio/flac"),
        ("wav", _) => s("wav", "audio/wav"),
        ("mp3", _) => s("mp3", "audio/mpeg"),
        ("aac", _) => s("aac", "audio/aac"),
        ("ts", _) => s("ts", "video/mp2t"),
        ("mov", _) => s("mov", "video/quicktime"),
        ("flv", _) => s("flv", "video/x-flv"),
        ("avi", _) => s("avi", "video/x-msvideo"),
        _ => s("bin", "application/octet-stream"),
    }
}

/// MP4 family: video if any track handler is `vide`, audio if only `soun`.
fn mp4(head: &[u8], audio_only: bool) -> Sniffed {
    let brand = head.get(8..12).unwrap_or_default();
    if brand == b"qt  " {
        return s("mov", "video/quicktime");
    }
    // hdlr box: size, "hdlr", version+flags (4), pre_defined (4), handler type (4).
    let handlers: Vec<&[u8]> = find_all(head, b"hdlr")
        .filter_map(|i| head.get(i + 12..i + 16))
        .collect();
    let video = handlers.contains(&&b"vide"[..]);
    let sound = handlers.contains(&&b"soun"[..]);
    let audio = if video || sound {
        !video
    } else {
        matches!(brand, b"M4A " | b"M4B ") || audio_only
    };
    if audio {
        s("m4a", "audio/mp4")
    } else {
        s("mp4", "video/mp4")
    }
}

/// MPEG-TS: sync byte 0x47 every 188 bytes (all packets present in `head`, at least one).
fn is_mpeg_ts(head: &[u8]) -> bool {
    head.len() >= 188 && head.chunks_exact(188).all(|packet| packet[0] == 0x47)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    find_all(hay, needle).next().is_some()
}

fn find_all<'a>(hay: &'a [u8], needle: &'a [u8]) -> impl Iterator<Item = usize> + 'a {
    hay.windows(needle.len())
        .enumerate()
        .filter(move |(_, w)| *w == needle)
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mp4_with(handlers: &[&[u8; 4]], brand: &[u8; 4]) -> Vec<u8> {
        let mut v = vec![0, 0, 0, 0x18];
        v.extend_from_slice(b"ftyp");
        v.extend_from_slice(brand);
        v.extend_from_slice(&[0; 12]);
        for h in handlers {
            v.extend_from_slice(&[0, 0, 0, 0x21]);
            v.extend_from_slice(b"hdlr");
            v.extend_from_slice(&[0; 8]);
            v.extend_from_slice(*h);
            v.extend_from_slice(&[0; 13]);
        }
        v
    }

    #[test]
    fn mp4_video_audio_and_quicktime() {
        assert_eq!(
            sniff(&mp4_with(&[b"vide", b"soun"], b"isom"), false),
            s("mp4", "video/mp4")
        );
        assert_eq!(
            sniff(&mp4_with(&[b"soun"], b"isom"), false),
            s("m4a", "audio/mp4")
        );
        assert_eq!(sniff(&mp4_with(&[], b"M4A "), false), s("m4a", "audio/mp4"));
        assert_eq!(sniff(&mp4_with(&[], b"isom"), true), s("m4a", "audio/mp4"));
        assert_eq!(sniff(&mp4_with(&[], b"isom"), false), s("mp4", "video/mp4"));
        assert_eq!(
            sniff(&mp4_with(&[], b"qt  "), false),
            s("mov", "video/quicktime")
        );
    }

    #[test]
    fn mpeg_ts_needs_every_sync_byte() {
        let mut ts = vec![0u8; 188 * 3];
        for p in ts.chunks_mut(188) {
            p[0] = 0x47;
        }
        assert_eq!(sniff(&ts, false), s("ts", "video/mp2t"));
        ts[188] = 0;
        assert_eq!(sniff(&ts, false).ext, "bin");
        assert_eq!(sniff(&[0x47; 10], false).ext, "bin");
    }

    #[test]
    fn matroska_family() {
        let mut webm = vec![0x1a, 0x45, 0xdf, 0xa3, 0x9f, 0x42, 0x82, 0x84];
        webm.extend_from_slice(b"webm");
        assert_eq!(sniff(&webm, false), s("webm", "video/webm"));
        assert_eq!(sniff(&webm, true), s("webm", "audio/webm"));
        let mkv = [
            0x1a, 0x45, 0xdf, 0xa3, 0x42, 0x82, 0x88, b'm', b'a', b't', b'r', b'o', b's', b'k',
            b'a',
        ];
        assert_eq!(sniff(&mkv, false), s("mkv", "video/x-matroska"));
    }

    #[test]
    fn audio_and_others() {
        assert_eq!(sniff(b"ID3\x04\0\0", false), s("mp3", "audio/mpeg"));
        assert_eq!(
            sniff(&[0xff, 0xfb, 0x90, 0x00], false),
            s("mp3", "audio/mpeg")
        );
        assert_eq!(
            sniff(&[0xff, 0xf1, 0x50, 0x80], false),
            s("aac", "audio/aac")
        );
        assert_eq!(
            sniff(b"OggS\0\x02....OpusHead", false),
            s("opus", "audio/ogg")
        );
        assert_eq!(
            sniff(b"OggS\0\x02....\x01vorbis", false),
            s("ogg", "audio/ogg")
        );
        assert_eq!(sniff(b"fLaC\0\0\0\x22", false), s("flac", "audio/flac"));
        assert_eq!(
            sniff(b"RIFF\x24\0\0\0WAVEfmt ", false),
            s("wav", "audio/wav")
        );
        assert_eq!(sniff(b"FLV\x01\x05", false), s("flv", "video/x-flv"));
        assert_eq!(
            sniff(b"<!doctype html>", false),
            s("bin", "application/octet-stream")
        );
        assert_eq!(sniff(b"", false).ext, "bin");
    }
}
