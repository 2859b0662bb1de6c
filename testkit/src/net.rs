//! Loopback ports for servers that must be told their port up front (redis-server, uvicorn).

/// A port nothing listens on right now: the kernel's pick for `127.0.0.1:0`, released at once
/// (another process may take it before the caller binds it; servers that can report their
/// own port should be started on port 0 instead).
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
