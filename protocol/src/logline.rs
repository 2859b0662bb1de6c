//! The text-log line both binaries write (the gateway's and the sidecar's logs share one
//! file): client-controlled text (a URL, a title, a field name in a parse error, a plugin's
//! or yt-dlp's message) cannot start a forged line.

/// Writes one formatted event (tracing-subscriber writes each in one call) with every
/// control character but its final newline, tabs and the ESC of colours written as `\xNN`.
/// tracing-subscriber already escapes ESC inside values.
pub struct OneLine<W>(pub W);

impl<W: std::io::Write> std::io::Write for OneLine<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let (body, end): (&[u8], &[u8]) = match buf.strip_suffix(b"\n") {
            Some(body) => (body, b"\n"),
            None => (buf, b""),
        };
        let mut line = Vec::with_capacity(buf.len() + 16);
        for &b in body {
            match b {
                b'\t' | 0x1b => line.push(b),
                b if b < 0x20 || b == 0x7f => line.extend(format!("\\x{b:02x}").bytes()),
                _ => line.push(b),
            }
        }
        line.extend_from_slice(end);
        self.0.write_all(&line)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::OneLine;

    #[test]
    fn only_the_final_newline_stays() {
        let mut out = OneLine(Vec::new());
        out.write_all(b"url=http://a/\nforged line\r\x7f\tend\n")
            .unwrap();
        assert_eq!(out.0, b"url=http://a/\\x0aforged line\\x0d\\x7f\tend\n");
    }
}
