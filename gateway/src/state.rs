//! The state directory of the embedded default: the token key (created on first run, mode
//! 0600, in a 0700 directory) and the socket of the sidecar the gateway spawns. Used at
//! start-up (`cli`), never while a configuration is parsed.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::config::{Config, ConfigError};
use crate::plugin::builtin;

/// File name of the token key ring inside the state directory.
pub const KEY_FILE: &str = "token.key";

/// The embedded default configuration ([`Config::embedded`]) with the key ring of
/// `state_dir`, created on first use.
pub fn embedded_config(state_dir: &Path, allow_private_urls: bool) -> Result<Config, ConfigError> {
    let keys = load_or_create_key(state_dir)?;
    Ok(Config::embedded(&keys, allow_private_urls))
}

/// Creates the state directory (mode 0700) unless it exists.
pub fn ensure_dir(state_dir: &Path) -> Result<(), ConfigError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state_dir)
        .map_err(|source| ConfigError::State {
            path: state_dir.to_owned(),
            source,
        })
}

/// Reads the token-xchacha key ring (`id:base64key[,…]`) from `state_dir`, creating the
/// directory and a new key when missing.
pub fn load_or_create_key(state_dir: &Path) -> Result<String, ConfigError> {
    let err = |source| ConfigError::State {
        path: state_dir.to_owned(),
        source,
    };
    ensure_dir(state_dir)?;
    let path = state_dir.join(KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => {
            return Ok(text.trim().to_owned());
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let keys = builtin::xchacha_generate_key();
    // create_new: two processes racing on first run must not overwrite each other's key.
    let created = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path);
    match created {
        Ok(mut file) => {
            writeln!(file, "{keys}").map_err(err)?;
            file.sync_all().map_err(err)?;
            tracing::info!(path = %path.display(), "created a new token key");
            Ok(keys)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => load_or_create_key(state_dir),
        Err(e) => Err(err(e)),
    }
}

/// Socket path of a spawned sidecar.
pub fn sidecar_socket(state_dir: &Path) -> PathBuf {
    state_dir.join("sidecar.sock")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn creates_the_key_once_with_mode_0600() {
        let dir = std::env::temp_dir().join(format!("sg-state-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = load_or_create_key(&dir).unwrap();
        let again = load_or_create_key(&dir).unwrap();
        assert_eq!(first, again);
        assert!(first.starts_with('k') && first.contains(':'), "{first}");
        let mode = std::fs::metadata(dir.join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
