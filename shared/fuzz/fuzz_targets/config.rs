//! The configuration loader: a `proxy.yaml` text plus an environment overlay, then validation.
//!
//! Input: the YAML text up to the first NUL byte; after it, NUL-separated environment entries
//! whose first byte picks one of the variables the loader knows (random names would never hit
//! one) and whose rest is the value. Plain YAML files are therefore valid seeds as they are.
//!
//! Properties: loading never panics; an accepted configuration compiles (or is refused) by the
//! router without panicking, and its dump loads back to the same configuration (as
//! `Config::to_yaml` promises).
#![no_main]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::LazyLock;

use gatehouse_shared::config::{load_text, settings};
use gatehouse_shared::routing::{Router, effective_policies};
use libfuzzer_sys::fuzz_target;

static ENV_NAMES: LazyLock<Vec<&'static str>> = LazyLock::new(|| {
    let mut names: Vec<&'static str> = settings().flat_map(|s| s.env.iter().copied()).collect();
    names.extend(["OCIS_BASE_DATA_PATH", "HOME", "OCIS_CONFIG_DIR"]);
    names
});

fuzz_target!(|data: &[u8]| {
    let mut parts = data.split(|b| *b == 0);
    let yaml = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let mut env = BTreeMap::new();
    for entry in parts {
        if let Some((&pick, value)) = entry.split_first() {
            let name = ENV_NAMES[usize::from(pick) % ENV_NAMES.len()];
            env.insert(name.to_owned(), String::from_utf8_lossy(value).into_owned());
        }
    }
    let origin = Path::new("fuzz.yaml");
    let Ok(config) = load_text(&yaml, origin, &env) else {
        return;
    };
    let policies = effective_policies(&config.policies, &config.additional_policies);
    let _ = Router::new(&policies, config.policy_selector.as_ref());
    let _ = config.masked().to_yaml();

    let dumped = config.to_yaml();
    match load_text(&dumped, origin, &BTreeMap::new()) {
        Ok(again) => assert!(again == config, "the dump loads differently:\n{dumped}"),
        Err(e) => panic!("the dump of an accepted configuration is refused: {e}\n{dumped}"),
    }
});
