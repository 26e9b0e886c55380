//! Loading: defaults, then the YAML file, then the environment, then sanitising and validation —
//! the order of oCIS's `config/parser/parse.go`.
//!
//! The file is merged onto the serialized defaults before it is deserialized, so a file that sets
//! one key of a nested block (`oidc.user_info_cache.store`) keeps the defaults of its siblings,
//! exactly as Go's YAML decoder does when it decodes onto a pre-filled struct.
//!
//! [`load`] reads the filesystem but never the process environment: everything it consults is in
//! [`ConfigSource`], which keeps it deterministic under test.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_yaml_ng::{Mapping, Value};

use super::env;
use super::error::{ConfigErrors, ConfigProblem};
use super::schema::Config;
use super::secrets;
use super::subst;
use super::validate;

/// Where the configuration comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigSource {
    /// An explicit file (`--config`, `PROXY_CONFIG_FILE`); it must exist. `None`: look for
    /// `proxy.yaml` in the oCIS configuration directories, see [`config_file_candidates`].
    pub file: Option<PathBuf>,
    pub env: BTreeMap<String, String>,
}

/// The loaded configuration and the file it was read from, if any.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    pub config: Config,
    pub file: Option<PathBuf>,
}

/// Names the explicit configuration file when no command-line option does.
pub const CONFIG_FILE_ENV: &str = "PROXY_CONFIG_FILE";
const FILE_NAME: &str = "proxy.yaml";

impl ConfigSource {
    /// Snapshot of the process environment (variables that are not valid UTF-8 are left out).
    /// `file` falls back to `PROXY_CONFIG_FILE` when it is `None`.
    pub fn from_process(file: Option<PathBuf>) -> Self {
        let env: BTreeMap<String, String> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect();
        let file = file.or_else(|| {
            env.get(CONFIG_FILE_ENV)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        });
        ConfigSource { file, env }
    }
}

fn env_value<'a>(env: &'a BTreeMap<String, String>, name: &str) -> Option<&'a str> {
    env.get(name).map(String::as_str).filter(|v| !v.is_empty())
}

/// The oCIS base data path: `OCIS_BASE_DATA_PATH`, else `$HOME/.ocis`, else `/var/lib/ocis`
/// (oCIS's fallback for users without a home directory).
pub fn base_data_path(env: &BTreeMap<String, String>) -> PathBuf {
    if let Some(p) = env_value(env, "OCIS_BASE_DATA_PATH") {
        return PathBuf::from(p);
    }
    match env_value(env, "HOME") {
        Some(home) => Path::new(home).join(".ocis"),
        None => PathBuf::from("/var/lib/ocis"),
    }
}

/// Where `proxy.yaml` is looked for when no file is given, first match wins.
///
/// oCIS reads exactly one file, `<config dir>/proxy.yaml`, where the directory is
/// `OCIS_CONFIG_DIR` if set, else `$HOME/.ocis/config` for the standard binary and `/etc/ocis`
/// for the container images (`ocis-pkg/config/defaults/paths.go`). Gatehouse cannot know which
/// build it replaces, so without `OCIS_CONFIG_DIR` it tries both, home directory first.
pub fn config_file_candidates(env: &BTreeMap<String, String>) -> Vec<PathBuf> {
    if let Some(dir) = env_value(env, "OCIS_CONFIG_DIR") {
        return vec![Path::new(dir).join(FILE_NAME)];
    }
    let mut candidates = Vec::new();
    if let Some(home) = env_value(env, "HOME") {
        candidates.push(Path::new(home).join(".ocis").join("config").join(FILE_NAME));
    }
    candidates.push(Path::new("/etc/ocis").join(FILE_NAME));
    candidates
}

/// Loads, overlays, sanitises and validates. Every problem found is reported, not just the first.
pub fn load(src: &ConfigSource) -> Result<Loaded, ConfigErrors> {
    let mut problems = Vec::new();
    let file = match &src.file {
        Some(path) => Some(path.clone()),
        None => config_file_candidates(&src.env)
            .into_iter()
            .find(|p| p.is_file()),
    };
    let mut config = Config::default();
    if let Some(path) = &file {
        match std::fs::read_to_string(path) {
            Ok(text) => match parse_yaml_in(&text, path, &src.env) {
                Ok(parsed) => config = parsed,
                Err(mut found) => problems.append(&mut found),
            },
            Err(e) => problems.push(ConfigProblem::new(
                path.display().to_string(),
                format!("cannot read the configuration file: {e}"),
            )),
        }
    }
    let config = overlay_and_validate(config, &src.env, problems)?;
    Ok(Loaded { config, file })
}

/// [`load`] for a `proxy.yaml` that is already in memory: parses `text` onto the defaults, then
/// overlays `env`, sanitises and validates. `origin` names the text in problems that have no key
/// path. Never panics on any text or environment; everything wrong is a [`ConfigProblem`].
pub fn load_text(
    text: &str,
    origin: &Path,
    env: &BTreeMap<String, String>,
) -> Result<Config, ConfigErrors> {
    let (config, problems) = match parse_yaml_in(text, origin, env) {
        Ok(config) => (config, Vec::new()),
        Err(problems) => (Config::default(), problems),
    };
    overlay_and_validate(config, env, problems)
}

fn overlay_and_validate(
    mut config: Config,
    env: &BTreeMap<String, String>,
    mut problems: Vec<ConfigProblem>,
) -> Result<Config, ConfigErrors> {
    env::overlay(&mut config, env, &mut problems);
    secrets::resolve_files(&mut config, &mut problems);
    resolve_paths(&mut config, &base_data_path(env));
    validate::sanitize_and_validate(&mut config, &mut problems);
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(problems))
    }
}

/// Parses a `proxy.yaml` text onto the defaults (no environment, no validation).
/// `origin` names the file in problems that have no key path. `${VAR}` references must have
/// defaults (there is no environment); [`load`] and [`load_text`] expand them from theirs.
pub fn parse_yaml(text: &str, origin: &Path) -> Result<Config, Vec<ConfigProblem>> {
    parse_yaml_in(text, origin, &BTreeMap::new())
}

fn parse_yaml_in(
    text: &str,
    origin: &Path,
    env: &BTreeMap<String, String>,
) -> Result<Config, Vec<ConfigProblem>> {
    let origin = origin.display().to_string();
    let mut file_value: Value = serde_yaml_ng::from_str(text)
        .map_err(|e| vec![ConfigProblem::new(&origin, format!("invalid YAML: {e}"))])?;
    file_value.apply_merge().map_err(|e| {
        vec![ConfigProblem::new(
            &origin,
            format!("invalid YAML merge key: {e}"),
        )]
    })?;
    let file_map = match file_value {
        Value::Null => Mapping::new(),
        Value::Mapping(m) => m,
        _ => {
            return Err(vec![ConfigProblem::new(
                origin,
                "the file must contain a mapping of configuration keys",
            )]);
        }
    };
    let defaults = defaults_value();
    let mut file_value = Value::Mapping(file_map);
    let mut problems = Vec::new();
    subst::expand_tree(&mut file_value, Some(&defaults), "", env, &mut problems);
    if !problems.is_empty() {
        return Err(problems);
    }
    // Expansion replaces scalars only: the mapping stays one.
    let file_map = match file_value {
        Value::Mapping(m) => m,
        _ => Mapping::new(),
    };

    // Each top-level key is checked on its own so that mistakes in different sections are all
    // reported; serde stops at the first error of one deserialization.
    for (key, value) in &file_map {
        let mut single = Mapping::new();
        single.insert(key.clone(), value.clone());
        let mut merged = defaults.clone();
        merge(&mut merged, Value::Mapping(single));
        if let Err(p) = deserialize(merged) {
            problems.push(p);
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let mut merged = defaults;
    merge(&mut merged, Value::Mapping(file_map));
    deserialize(merged).map_err(|p| vec![p])
}

fn defaults_value() -> Value {
    // Serializing plain structs of strings, numbers and lists into a `Value` cannot fail; an
    // empty mapping would merely lose the nested-default merge, never accept a bad file.
    serde_yaml_ng::to_value(Config::default()).unwrap_or_else(|_| Value::Mapping(Mapping::new()))
}

/// Deep-merges `overlay` onto `base`: mappings merge key by key, anything else replaces,
/// and an explicit null (`http:` with nothing under it) keeps the base value.
fn merge(base: &mut Value, overlay: Value) {
    match (base, overlay) {
        (_, Value::Null) => {}
        (Value::Mapping(base), Value::Mapping(overlay)) => {
            for (k, v) in overlay {
                match base.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        base.insert(k, v);
                    }
                }
            }
        }
        (base, overlay) => *base = overlay,
    }
}

fn deserialize(value: Value) -> Result<Config, ConfigProblem> {
    serde_path_to_error::deserialize::<_, Config>(value).map_err(|e| {
        let path = e.path().to_string();
        let key = if path == "." {
            "(root)".to_owned()
        } else {
            path
        };
        ConfigProblem::new(key, e.into_inner().to_string())
    })
}

/// Fills in the values oCIS derives from the base data path.
fn resolve_paths(config: &mut Config, base: &Path) {
    let proxy_dir = base.join("proxy");
    if config.http.tls_cert.is_empty() {
        config.http.tls_cert = proxy_dir.join("server.crt").display().to_string();
    }
    if config.http.tls_key.is_empty() {
        config.http.tls_key = proxy_dir.join("server.key").display().to_string();
    }
    if config.csp_config_file_location.is_empty() {
        let csp = proxy_dir.join("csp.yaml");
        if csp.is_file() {
            config.csp_config_file_location = csp.display().to_string();
        }
    }
}
