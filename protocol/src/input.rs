//! The two texts a client controls in a job — the URL and the format selector — and the one
//! rule for each. The gateway applies them before any plugin sees a request; the sidecar
//! applies them again to every job frame, so neither trusts the other's parsing.

use url::Url;

/// Longest URL accepted (bytes): browsers and CDNs stop well before this.
pub const MAX_URL_LEN: usize = 8 * 1024;
/// Longest format selector accepted (bytes).
pub const MAX_FORMAT_LEN: usize = 256;

/// Why a URL or a format selector was refused. The text is safe to show a client.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    #[error("the URL is empty or longer than {MAX_URL_LEN} bytes")]
    UrlLength,
    #[error("the URL contains whitespace or control characters")]
    UrlControl,
    #[error("the URL contains a backslash")]
    UrlBackslash,
    #[error("the URL is not valid: {0}")]
    UrlSyntax(String),
    #[error("only http and https URLs are allowed")]
    UrlScheme,
    #[error("the URL has no host")]
    UrlHost,
    #[error("URLs with a user name or password are not allowed")]
    UrlUserinfo,
    #[error("the format is empty, longer than {MAX_FORMAT_LEN} bytes or starts with '-'")]
    FormatLength,
    #[error("the format contains control characters")]
    FormatControl,
    #[error("the format asks for several downloads (`,`, `all`, `mergeall`)")]
    FormatMulti,
}

/// Parses `text` once (WHATWG rules) and returns its canonical serialization, without the
/// fragment (never sent to a server; yt-dlp would read `#__youtubedl_smuggle` from it).
/// Refused: whitespace and control characters anywhere (a parser would silently drop
/// some), backslashes (read as `/` by WHATWG parsers but not by others), any `@` in the
/// authority (user info lets two parsers disagree about the host), schemes other than
/// http(s), and URLs without a host.
pub fn canonical_url(text: &str) -> Result<String, InputError> {
    if text.is_empty() || text.len() > MAX_URL_LEN {
        return Err(InputError::UrlLength);
    }
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(InputError::UrlControl);
    }
    if text.contains('\\') {
        return Err(InputError::UrlBackslash);
    }
    let authority = text
        .split_once("//")
        .map(|(_, rest)| rest.split(['/', '?', '#']).next().unwrap_or(""));
    if authority.is_some_and(|a| a.contains('@')) {
        return Err(InputError::UrlUserinfo);
    }
    let mut url = Url::parse(text).map_err(|e| InputError::UrlSyntax(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(InputError::UrlScheme);
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(InputError::UrlHost);
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(InputError::UrlUserinfo);
    }
    url.set_fragment(None);
    Ok(url.into())
}

/// Checks a yt-dlp format selector: one download only (no `,` list, no `all` or
/// `mergeall`, which stream several files back to back), bounded, no control characters,
/// not an option.
pub fn check_format(format: &str) -> Result<(), InputError> {
    if format.is_empty() || format.len() > MAX_FORMAT_LEN || format.starts_with('-') {
        return Err(InputError::FormatLength);
    }
    if format.chars().any(char::is_control) {
        return Err(InputError::FormatControl);
    }
    if format.contains(',') {
        return Err(InputError::FormatMulti);
    }
    // Words outside `[filters]`: a filter may compare a field with the text "all".
    let mut depth = 0usize;
    let mut outside = String::with_capacity(format.len());
    for c in format.chars() {
        match c {
            '[' => depth += 1,
            ']' => depth = depth.saturating_sub(1),
            _ if depth == 0 => outside.push(c),
            _ => {}
        }
    }
    let multi = outside
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .any(|word| word.eq_ignore_ascii_case("all") || word.eq_ignore_ascii_case("mergeall"));
    if multi {
        return Err(InputError::FormatMulti);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_forms() {
        let ok = |s: &str| canonical_url(s).unwrap();
        assert_eq!(ok("HTTP://Example.COM"), "http://example.com/");
        assert_eq!(
            ok("http://example.com:80/a/../b?x=1#frag"),
            "http://example.com/b?x=1"
        );
        assert_eq!(ok("http://2130706433/v.mp4"), "http://127.0.0.1/v.mp4");
        assert_eq!(ok("http://0x7f.1/"), "http://127.0.0.1/");
        assert_eq!(ok("http://0177.0.0.1/"), "http://127.0.0.1/");
        assert_eq!(ok("http://[::ffff:127.0.0.1]/"), "http://[::ffff:7f00:1]/");
        assert_eq!(ok("https://ex.com/a%20b"), "https://ex.com/a%20b");
    }

    #[test]
    fn refusals() {
        let err = |s: &str| canonical_url(s).unwrap_err();
        assert_eq!(err(""), InputError::UrlLength);
        assert_eq!(
            err(&format!("http://e.com/{}", "a".repeat(MAX_URL_LEN))),
            InputError::UrlLength
        );
        assert_eq!(
            err("http://allowed.example\\@127.0.0.1:8080/f.mp4"),
            InputError::UrlBackslash
        );
        assert_eq!(err("http://user:pw@example.com/"), InputError::UrlUserinfo);
        assert_eq!(err("http://@example.com/"), InputError::UrlUserinfo);
        assert_eq!(err("http://example.com/ a"), InputError::UrlControl);
        assert_eq!(err(" http://example.com/"), InputError::UrlControl);
        assert_eq!(err("http://exa\tmple.com/"), InputError::UrlControl);
        assert_eq!(err("http://example.com/\n"), InputError::UrlControl);
        assert_eq!(err("file:///etc/passwd"), InputError::UrlScheme);
        assert_eq!(err("ftp://example.com/"), InputError::UrlScheme);
        assert_eq!(err("javascript:alert(1)"), InputError::UrlScheme);
        assert!(matches!(
            err("http://"),
            InputError::UrlSyntax(_) | InputError::UrlHost
        ));
        assert!(matches!(err("not a url"), InputError::UrlControl));
        assert!(matches!(err("-o/tmp/x"), InputError::UrlSyntax(_)));
    }

    #[test]
    fn formats() {
        for ok in [
            "best",
            "18",
            "bv*+ba/b",
            "bv[height<=720]+ba",
            "b[format_note=all]",
            "worst",
        ] {
            assert_eq!(check_format(ok), Ok(()), "{ok}");
        }
        assert_eq!(check_format(""), Err(InputError::FormatLength));
        assert_eq!(check_format("-x"), Err(InputError::FormatLength));
        assert_eq!(
            check_format(&"b/".repeat(200)),
            Err(InputError::FormatLength)
        );
        assert_eq!(check_format("18,22"), Err(InputError::FormatMulti));
        assert_eq!(check_format("all"), Err(InputError::FormatMulti));
        assert_eq!(check_format("bv+ALL"), Err(InputError::FormatMulti));
        assert_eq!(
            check_format("mergeall[vcodec=none]"),
            Err(InputError::FormatMulti)
        );
        assert_eq!(check_format("b\n"), Err(InputError::FormatControl));
    }
}
