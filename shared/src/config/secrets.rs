//! The one list of secret settings, and secrets read from files.
//!
//! Container platforms mount secrets as files. Any secret can therefore be given as a file:
//! `<VARIABLE>_FILE=/run/secrets/x` next to each of its environment variables (same precedence:
//! the last one set wins, whether plain or `_FILE`), or `file:/run/secrets/x` as the value
//! itself, in `proxy.yaml` or in a variable. One trailing line break is removed, as files written
//! by `echo` or editors end with one. Dumps mask every secret in this list
//! ([`Config::masked`](super::Config::masked)).

use std::collections::BTreeMap;

use super::error::ConfigProblem;
use super::schema::Config;

/// The prefix of a value that names the file holding it.
pub const FILE_PREFIX: &str = "file:";

/// Every secret field with its dotted key.
pub(crate) fn secrets_mut(c: &mut Config) -> Vec<(&'static str, &mut String)> {
    let mut out: Vec<(&'static str, &mut String)> = vec![
        ("debug.token", &mut c.debug.token),
        ("machine_auth_api_key", &mut c.machine_auth_api_key),
        (
            "service_account.service_account_secret",
            &mut c.service_account.service_account_secret,
        ),
        ("token_manager.jwt_secret", &mut c.token_manager.jwt_secret),
        ("events.password", &mut c.events.password),
        ("events.token", &mut c.events.token),
        ("events.nkey_seed", &mut c.events.nkey_seed),
        (
            "service_registry.password",
            &mut c.service_registry.password,
        ),
        ("service_registry.token", &mut c.service_registry.token),
        (
            "service_registry.nkey_seed",
            &mut c.service_registry.nkey_seed,
        ),
    ];
    for (password, token, seed, store) in [
        (
            "oidc.user_info_cache.password",
            "oidc.user_info_cache.token",
            "oidc.user_info_cache.nkey_seed",
            &mut c.oidc.user_info_cache,
        ),
        (
            "pre_signed_url.signing_keys.password",
            "pre_signed_url.signing_keys.token",
            "pre_signed_url.signing_keys.nkey_seed",
            &mut c.pre_signed_url.signing_keys,
        ),
        (
            "state_store.password",
            "state_store.token",
            "state_store.nkey_seed",
            &mut c.state_store,
        ),
    ] {
        out.push((password, &mut store.password));
        out.push((token, &mut store.token));
        out.push((seed, &mut store.nkey_seed));
    }
    out
}

/// The keys of every secret setting.
pub(crate) fn secret_keys() -> Vec<&'static str> {
    secrets_mut(&mut Config::default())
        .into_iter()
        .map(|(k, _)| k)
        .collect()
}

/// The contents of a secret file, without one trailing line break.
pub(crate) fn read_secret_file(path: &str) -> Result<String, String> {
    let mut text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the secret file {path:?}: {e}"))?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    if text.is_empty() {
        return Err(format!("the secret file {path:?} is empty"));
    }
    Ok(text)
}

/// Replaces every `file:` secret by the file's contents.
pub(crate) fn resolve_files(config: &mut Config, problems: &mut Vec<ConfigProblem>) {
    for (key, value) in secrets_mut(config) {
        if let Some(path) = value.strip_prefix(FILE_PREFIX) {
            match read_secret_file(path) {
                Ok(secret) => *value = secret,
                Err(message) => problems.push(ConfigProblem::new(key, message)),
            }
        }
    }
}

/// The value of a secret setting from its variables `names` (precedence order), each also
/// accepted as `<name>_FILE`: the name of the variable that won and its value, read from the
/// file for a `_FILE` variable.
pub(crate) fn from_env(
    names: &[&str],
    env: &BTreeMap<String, String>,
) -> Option<(String, Result<String, String>)> {
    names.iter().rev().find_map(|name| {
        let file = format!("{name}_FILE");
        // Both set: the `_FILE` variant is the more deliberate of the two.
        if let Some(path) = env.get(&file) {
            return Some((file, read_secret_file(path)));
        }
        env.get(*name).map(|v| ((*name).to_owned(), Ok(v.clone())))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_secret_is_masked_in_dumps() {
        let mut c = Config::default();
        for (_, v) in secrets_mut(&mut c) {
            *v = "s3cret".into();
        }
        let dumped = c.masked().to_yaml();
        assert!(!dumped.contains("s3cret"), "{dumped}");
    }

    #[test]
    fn file_values_are_read_and_bad_ones_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "hunter2\n").unwrap();
        let mut c = Config::default();
        c.state_store.password = format!("file:{}", path.display());
        c.events.token = "file:/nonexistent/secret".into();
        let mut problems = Vec::new();
        resolve_files(&mut c, &mut problems);
        assert_eq!(c.state_store.password, "hunter2");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].to_string().contains("events.token"),
            "{problems:?}"
        );
    }

    #[test]
    fn file_variables_take_the_precedence_of_their_variable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "from-file\r\n").unwrap();
        let env = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let names = [
            "OCIS_CACHE_AUTH_PASSWORD",
            "PROXY_STATE_STORE_AUTH_PASSWORD",
        ];
        let p = path.display().to_string();
        let got = from_env(
            &names,
            &env(&[
                ("OCIS_CACHE_AUTH_PASSWORD_FILE", p.as_str()),
                ("PROXY_STATE_STORE_AUTH_PASSWORD", "plain"),
            ]),
        );
        assert_eq!(got.unwrap().1.unwrap(), "plain");
        let got = from_env(
            &names,
            &env(&[
                ("OCIS_CACHE_AUTH_PASSWORD", "plain"),
                ("PROXY_STATE_STORE_AUTH_PASSWORD_FILE", p.as_str()),
            ]),
        );
        let (name, value) = got.unwrap();
        assert_eq!(name, "PROXY_STATE_STORE_AUTH_PASSWORD_FILE");
        assert_eq!(value.unwrap(), "from-file");
        assert!(secret_keys().contains(&"state_store.nkey_seed"));
        assert!(!secret_keys().contains(&"state_store.username"));
    }
}
