//! Who may talk to the sidecar: the kernel's credentials of each accepted connection's peer
//! (`SO_PEERCRED`), checked against the sidecar's own uid and the `--allow-uid` ones. The
//! socket file's mode is the first gate; this one still holds when that mode is wider than
//! meant (a shared `--socket-group`, a socket moved into a shared directory).

use tokio::net::UnixStream;
use tracing::warn;

/// The uids allowed to connect, and how many connections were refused so far.
pub(crate) struct Peers {
    allowed: Vec<u32>,
    refused: u64,
}

impl Peers {
    /// The sidecar's own effective uid (as its user namespace sees it) and `extra`.
    pub fn new(extra: &[u32]) -> Peers {
        let mut allowed = vec![nix::unistd::geteuid().as_raw()];
        allowed.extend_from_slice(extra);
        Peers {
            allowed,
            refused: 0,
        }
    }

    /// Whether `stream`'s peer may talk to the sidecar. A refusal is logged with the peer's
    /// uid and pid and the running count of refusals; the caller closes the connection.
    pub fn admit(&mut self, stream: &UnixStream) -> bool {
        let cred = match stream.peer_cred() {
            Ok(cred) if self.allowed.contains(&cred.uid()) => return true,
            Ok(cred) => cred,
            Err(e) => {
                self.refused += 1;
                warn!(
                    refused = self.refused,
                    "connection refused: no peer credentials: {e}"
                );
                return false;
            }
        };
        self.refused += 1;
        warn!(
            uid = cred.uid(),
            pid = cred.pid().unwrap_or(0),
            refused = self.refused,
            "connection refused: the peer's uid may not use the sidecar (--allow-uid)"
        );
        false
    }
}
