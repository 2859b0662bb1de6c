//! Compiled components on disk: cranelift's machine code for a plugin, kept so that the next
//! gateway start (`serve`, `check-config`, `mint --config`, a test's gateway) loads in
//! milliseconds what took 0.3 s (a Rust plugin) to 35 s (a JavaScript one) to compile.
//!
//! An entry is named by sha256(engine key ‖ sha256(wasm)), the engine key being wasmtime's
//! `precompile_compatibility_hash` (target, compiler flags, tunables, features, version), and
//! holds `MAGIC ‖ sha256(name ‖ code) ‖ code`. Entries are written to a fresh temporary
//! file and renamed into place, so a reader sees a whole entry or none. Any entry that does
//! not check out (torn, flipped bits, another entry's code, wasmtime refusing it) is compiled
//! again and replaced, never run.

use std::fs::{self, OpenOptions};
use std::hash::Hasher;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// First bytes of an entry: the format, so a future layout is a miss rather than garbage.
const MAGIC: &[u8; 8] = b"sgcwasm1";
const HASH_LEN: usize = 32;

/// Where a component came from, for the load's log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Source {
    /// Deserialized from a checked cache entry.
    Cache,
    /// Compiled by cranelift (no entry, or one that did not check out).
    Compiled,
}

/// A cache directory bound to one engine's compatibility key.
pub(super) struct ComponentCache {
    dir: PathBuf,
    engine_key: [u8; HASH_LEN],
}

/// The default directory: `$XDG_CACHE_HOME/streamgate/plugins`, else
/// `$HOME/.cache/streamgate/plugins`; none when neither is set.
pub(super) fn default_dir() -> Option<PathBuf> {
    let nonempty = |key| {
        std::env::var_os(key)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let base = nonempty("XDG_CACHE_HOME").or_else(|| nonempty("HOME").map(|h| h.join(".cache")))?;
    Some(base.join("streamgate").join("plugins"))
}

impl ComponentCache {
    /// Uses `dir` (created 0700) for `engine`'s components, or `None` with a warning when it
    /// cannot be created or is not safe to load code from: owned by another user, or
    /// writable by group or others (whoever can write an entry chooses the code we run).
    pub(super) fn open(dir: &Path, engine: &Engine) -> Option<Self> {
        match check_dir(dir) {
            Ok(()) => Some(Self {
                dir: dir.to_owned(),
                engine_key: engine_key(engine),
            }),
            Err(reason) => {
                tracing::warn!(dir = %dir.display(), "plugin cache off: {reason}");
                None
            }
        }
    }

    /// The component for `wasm`: from its entry if that checks out, else compiled (and the
    /// entry written; a failed write only costs the next start a compilation).
    pub(super) fn load_or_compile(
        &self,
        engine: &Engine,
        wasm: &[u8],
    ) -> wasmtime::Result<(Component, Source)> {
        let path = self.entry_path(wasm);
        if let Some(component) = self.load(engine, &path) {
            return Ok((component, Source::Cache));
        }
        let component = Component::new(engine, wasm)?;
        if let Err(e) = self.store(&path, &component) {
            tracing::warn!(entry = %path.display(), "plugin cache: cannot write: {e:#}");
        }
        Ok((component, Source::Compiled))
    }

    fn entry_path(&self, wasm: &[u8]) -> PathBuf {
        let name = Sha256::new()
            .chain_update(self.engine_key)
            .chain_update(Sha256::digest(wasm))
            .finalize();
        let hex: String = name.iter().map(|b| format!("{b:02x}")).collect();
        self.dir.join(format!("{hex}.cwasm"))
    }

    fn load(&self, engine: &Engine, path: &Path) -> Option<Component> {
        let bytes = match fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(entry = %path.display(), "plugin cache: cannot read: {e}");
                return None;
            }
        };
        let Some(code) = checked_code(path, &bytes) else {
            tracing::warn!(entry = %path.display(), "plugin cache: entry fails its check, compiling again");
            return None;
        };
        // SAFETY: wasmtime runs these bytes as machine code, so they must be what
        // `Component::serialize` wrote for an engine like this one. They are: the directory
        // is ours alone (`check_dir`), an entry appears only by renaming a whole file we
        // wrote, its sha256 (bound to its name, so one entry's code cannot pose as another's)
        // matched just above, and wasmtime itself refuses code from another version or
        // configuration. The bytes are checked in memory and handed over from there (wasmtime
        // copies them), not mapped from the file, which could change after the check.
        match unsafe { Component::deserialize(engine, code) } {
            Ok(component) => Some(component),
            Err(e) => {
                tracing::warn!(entry = %path.display(), "plugin cache: refused by wasmtime, compiling again: {e:#}");
                None
            }
        }
    }

    fn store(&self, path: &Path, component: &Component) -> wasmtime::Result<()> {
        let code = component.serialize()?;
        let tmp = path.with_extension(format!(
            "tmp.{}.{:x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let written = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            file.write_all(MAGIC)?;
            file.write_all(&entry_hash(path, &code))?;
            file.write_all(&code)?;
            file.sync_all()?;
            fs::rename(&tmp, path)
        })();
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        Ok(written?)
    }
}

/// The code of an entry whose magic and hash check out.
fn checked_code<'a>(path: &Path, bytes: &'a [u8]) -> Option<&'a [u8]> {
    let rest = bytes.strip_prefix(MAGIC.as_slice())?;
    let (hash, code) = rest.split_at_checked(HASH_LEN)?;
    (hash == entry_hash(path, code).as_slice()).then_some(code)
}

/// sha256(file name ‖ code).
fn entry_hash(path: &Path, code: &[u8]) -> [u8; HASH_LEN] {
    let name = path
        .file_name()
        .map(|n| n.as_encoded_bytes())
        .unwrap_or_default();
    Sha256::new()
        .chain_update(name)
        .chain_update(code)
        .finalize()
        .into()
}

/// sha256 of the engine's `precompile_compatibility_hash`, fed through a `Hasher` that keeps
/// every byte (std's hashers differ between Rust releases and keep 64 bits).
fn engine_key(engine: &Engine) -> [u8; HASH_LEN] {
    struct ShaHasher(Sha256);
    impl Hasher for ShaHasher {
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
        fn finish(&self) -> u64 {
            unreachable!("only the digest is read")
        }
    }
    let mut hasher = ShaHasher(Sha256::new());
    std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut hasher);
    hasher.0.finalize().into()
}

/// Creates `dir` (0700, parents as needed) and checks that only we can write to it.
fn check_dir(dir: &Path) -> Result<(), String> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("cannot create it: {e}"))?;
    let meta = fs::metadata(dir).map_err(|e| format!("cannot read it: {e}"))?;
    let uid = nix::unistd::geteuid().as_raw();
    if meta.uid() != uid {
        return Err(format!("owned by uid {}, not {uid}", meta.uid()));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "mode {:o} lets others write to it",
            meta.mode() & 0o777
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::plugin::{
        EngineSettings, PluginEngine, PolicyDecision, RequestInfo, StreamRequest, builtin,
    };

    fn engine() -> Engine {
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true);
        Engine::new(&config).unwrap()
    }

    fn entries(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_second_engine_loads_the_entry_the_first_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let wasm = builtin::POLICY_ALLOWLIST;
        let first = engine();
        let cache = ComponentCache::open(dir.path(), &first).unwrap();
        let (_, source) = cache.load_or_compile(&first, wasm).unwrap();
        assert_eq!(source, Source::Compiled);
        assert_eq!(
            entries(dir.path()).len(),
            1,
            "one entry, no temporary file left"
        );

        let second = engine();
        let cache = ComponentCache::open(dir.path(), &second).unwrap();
        let (component, source) = cache.load_or_compile(&second, wasm).unwrap();
        assert_eq!(source, Source::Cache);
        assert!(
            component
                .get_export_index(None, "streamgate:plugin/policy@0.1.0")
                .is_some()
        );

        // Another component is another entry, and an engine of another configuration
        // (another compatibility key) does not see these.
        let (_, source) = cache
            .load_or_compile(&second, builtin::TOKEN_XCHACHA)
            .unwrap();
        assert_eq!(source, Source::Compiled);
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true).epoch_interruption(true);
        let other = Engine::new(&config).unwrap();
        let cache = ComponentCache::open(dir.path(), &other).unwrap();
        assert_eq!(
            cache.load_or_compile(&other, wasm).unwrap().1,
            Source::Compiled
        );
        assert_eq!(entries(dir.path()).len(), 3);
    }

    #[test]
    fn a_damaged_entry_is_compiled_again_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let wasm = builtin::POLICY_ALLOWLIST;
        let engine = engine();
        let cache = ComponentCache::open(dir.path(), &engine).unwrap();
        cache.load_or_compile(&engine, wasm).unwrap();
        let entry = entries(dir.path()).remove(0);
        let good = fs::read(&entry).unwrap();

        let flipped = |at: usize| {
            let mut bytes = good.clone();
            bytes[at] ^= 0x40;
            bytes
        };
        let other = {
            // A whole, well-formed entry, but another component's under this one's name.
            let (c, _) = cache
                .load_or_compile(&engine, builtin::TOKEN_XCHACHA)
                .unwrap();
            let p = entries(dir.path())
                .into_iter()
                .find(|p| *p != entry)
                .unwrap();
            drop(c);
            fs::read(p).unwrap()
        };
        for (what, bytes) in [
            ("a flipped bit in the code", flipped(good.len() / 2)),
            ("a flipped bit in the last byte", flipped(good.len() - 1)),
            ("a flipped bit in the hash", flipped(MAGIC.len() + 3)),
            ("another format", flipped(0)),
            ("torn", good[..good.len() / 3].to_vec()),
            ("empty", Vec::new()),
            ("another component's entry", other),
        ] {
            fs::write(&entry, &bytes).unwrap();
            let (component, source) = cache.load_or_compile(&engine, wasm).unwrap();
            assert_eq!(source, Source::Compiled, "{what}: not trusted");
            assert!(
                component
                    .get_export_index(None, "streamgate:plugin/policy@0.1.0")
                    .is_some()
            );
            assert_eq!(
                fs::read(&entry).unwrap(),
                good,
                "{what}: replaced by a good entry"
            );
            assert_eq!(
                cache.load_or_compile(&engine, wasm).unwrap().1,
                Source::Cache
            );
        }
    }

    #[test]
    fn a_directory_others_can_write_is_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("shared");
        fs::create_dir(&shared).unwrap();
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o777)).unwrap();
        assert!(ComponentCache::open(&shared, &engine()).is_none());
        let fresh = dir.path().join("a/b");
        assert!(ComponentCache::open(&fresh, &engine()).is_some());
        assert_eq!(fs::metadata(&fresh).unwrap().mode() & 0o777, 0o700);
    }

    /// The whole path: two plugin engines on one directory, the second's policy comes from
    /// the first's entry and judges requests as the plugin does.
    #[tokio::test]
    async fn a_policy_loaded_from_the_cache_answers_calls() {
        let dir = tempfile::tempdir().unwrap();
        let settings = EngineSettings {
            cache_dir: Some(dir.path().to_owned()),
            ..EngineSettings::default()
        };
        let config = BTreeMap::from([("hosts".to_owned(), "example.com".to_owned())]);
        let load = || {
            PluginEngine::new(settings.clone())
                .unwrap()
                .load_policy(
                    "policy-allowlist",
                    builtin::POLICY_ALLOWLIST,
                    config.clone(),
                )
                .unwrap()
        };
        load();
        let entry = entries(dir.path()).remove(0);
        let written = fs::metadata(&entry).unwrap().ino();
        let policy = load();
        assert_eq!(
            fs::metadata(&entry).unwrap().ino(),
            written,
            "read, not written again"
        );
        let req = RequestInfo {
            method: "GET".into(),
            path: "/stream".into(),
            ..RequestInfo::default()
        };
        let ask = |url: &str| StreamRequest {
            url: url.into(),
            format: "best".into(),
            filename: None,
            expires_at: None,
        };
        assert!(matches!(
            policy
                .check(&req, &ask("https://example.com/a.mp4"))
                .await
                .unwrap(),
            PolicyDecision::Allow { .. }
        ));
        assert!(matches!(
            policy.check(&req, &ask("https://other.example/a.mp4")).await.unwrap(),
            PolicyDecision::Deny(d) if d.status == 403
        ));
    }
}
