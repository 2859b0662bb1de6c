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
            ConfigValue::File(FileRef { file }) => match std::fs::read_to_string(file) {
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

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sg-secrets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
