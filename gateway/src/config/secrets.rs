//! Plugin config values that may come from outside the TOML file: `"plain"`,
//! `{ env = "NAME" }` or `{ file = "/path" }`. Keys and API secrets then live in the
//! environment or a mounted secret file instead of a config that gets copied around.
//! Everything is resolved once at load, so a missing secret stops the start (or a reload).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::ConfigError;

/// One plugin config value, as written in the file.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum ConfigValue {
    /// A literal string.
    Plain(String),
    /// Read from an environment variable at load time.
    Env(EnvRef),
    /// Read from a file at load time; one trailing newline is dropped.
    File(FileRef),
}

/// `{ env = "NAME" }`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvRef {
    /// The variable's name.
    pub env: String,
}

/// `{ file = "/path" }`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRef {
    /// The file's path.
    pub file: PathBuf,
}

impl From<String> for ConfigValue {
    fn from(s: String) -> Self {
        ConfigValue::Plain(s)
    }
}

impl ConfigValue {
    /// The value itself; `field` (e.g. `tenant[1].token.config.keys`) names it in errors.
    pub fn resolve(&self, field: &str) -> Result<String, ConfigError> {
        match self {
            ConfigValue::Plain(s) => Ok(s.clone()),
            ConfigValue::Env(EnvRef { env }) => match std::env::var(env) {
                Ok(v) if !v.is_empty() => Ok(v),
                Ok(_) => Err(invalid(
                    field,
                    format!("environment variable {env} is empty"),
                )),
                Err(_) => Err(invalid(
                    field,
                    format!("environment variable {env} is not set"),
                )),
            },
            ConfigValue::File(FileRef { file }) => match read_secret_file(file) {
                Ok(v) => {
                    let v = v.strip_suffix('\n').unwrap_or(&v);
                    let v = v.strip_suffix('\r').unwrap_or(v);
                    Ok(v.to_owned())
                }
                Err(e) => Err(invalid(field, format!("reading {}: {e}", file.display()))),
            },
        }
    }
}

/// The most a `{ file = … }` value may hold: keys and API secrets are far smaller, and a
/// start or reload must not hang on `/dev/zero` or eat memory on a wrongly named file.
pub const MAX_SECRET_FILE_BYTES: u64 = 64 * 1024;

/// Reads a regular file (a symlink to one, as Kubernetes mounts secrets) of at most
/// [`MAX_SECRET_FILE_BYTES`]; a FIFO or device is refused before it is opened, so a
/// reload never blocks on one.
fn read_secret_file(path: &std::path::Path) -> std::io::Result<String> {
    use std::io::{Error, ErrorKind, Read};
    if !std::fs::metadata(path)?.is_file() {
        return Err(Error::new(ErrorKind::InvalidInput, "not a regular file"));
    }
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(MAX_SECRET_FILE_BYTES + 1)
        .read_to_string(&mut text)?;
    if text.len() as u64 > MAX_SECRET_FILE_BYTES {
        return Err(Error::new(
            ErrorKind::InvalidData,
            format!("larger than {MAX_SECRET_FILE_BYTES} bytes"),
        ));
    }
    Ok(text)
}

/// Resolves every value of a plugin's config map; `prefix` is the map's field path.
pub fn resolve_map(
    map: &BTreeMap<String, ConfigValue>,
    prefix: &str,
) -> Result<BTreeMap<String, String>, ConfigError> {
    map.iter()
        .map(|(k, v)| Ok((k.clone(), v.resolve(&format!("{prefix}.{k}"))?)))
        .collect()
}

fn invalid(field: &str, message: String) -> ConfigError {
    ConfigError::Invalid(format!("{field}: {message}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Map {
        config: BTreeMap<String, ConfigValue>,
    }

    #[test]
    fn plain_env_and_file_values() {
        let dir = tempfile_dir();
        let secret = dir.join("secret");
        std::fs::write(&secret, "s3cr3t\n").unwrap();
        // SAFETY: this test alone uses this variable name.
        unsafe { std::env::set_var("SG_SECRETS_TEST_KEY", "from-env") };
        let text = format!(
            "config = {{ a = \"plain\", b = {{ env = \"SG_SECRETS_TEST_KEY\" }}, c = {{ file = {:?} }} }}",
            secret.display().to_string()
        );
        let m: Map = toml::from_str(&text).unwrap();
        let r = resolve_map(&m.config, "tenant[0].token.config").unwrap();
        assert_eq!(r["a"], "plain");
        assert_eq!(r["b"], "from-env");
        assert_eq!(r["c"], "s3cr3t");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_secret_names_its_field() {
        let m: Map =
            toml::from_str("config = { keys = { env = \"SG_SURELY_UNSET_VAR\" } }").unwrap();
        let err = resolve_map(&m.config, "tenant[1].token.config").unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("tenant[1].token.config.keys: "), "{msg}");
        assert!(msg.contains("SG_SURELY_UNSET_VAR"), "{msg}");
        assert!(toml::from_str::<Map>("config = { k = { envv = \"X\" } }").is_err());
    }

    #[test]
    fn a_secret_file_must_be_a_small_regular_file() {
        // Not under tempfile_dir(): the test above removes that while this one may run.
        let dir = std::env::temp_dir().join(format!("sg-secret-limits-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let big = dir.join("big");
        std::fs::write(&big, vec![b'k'; MAX_SECRET_FILE_BYTES as usize + 1]).unwrap();
        let at_limit = dir.join("at-limit");
        std::fs::write(&at_limit, vec![b'k'; MAX_SECRET_FILE_BYTES as usize]).unwrap();
        let resolve = |file: &std::path::Path| {
            ConfigValue::File(FileRef { file: file.into() }).resolve("tenant[0].policy.config.k")
        };
        assert_eq!(
            resolve(&at_limit).unwrap().len(),
            MAX_SECRET_FILE_BYTES as usize
        );
        let msg = resolve(&big).unwrap_err().to_string();
        assert!(msg.contains("larger than 65536 bytes"), "{msg}");
        // An endless device and the directory itself: refused at once, nothing read.
        for path in [std::path::Path::new("/dev/zero"), dir.as_path()] {
            let msg = resolve(path).unwrap_err().to_string();
            assert!(msg.contains("not a regular file"), "{msg}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sg-secrets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
