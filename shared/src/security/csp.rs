//! The Content-Security-Policy (spec §6.2): loaded once at start-up from the oCIS-compatible
//! `csp.yaml` (`directives: {name: [values]}`), with `${VAR}` / `${VAR|default}` substitution in
//! the values, validated, and rendered to the header value once.
//!
//! Validation follows the rules of the CSP builder oCIS uses (directives that need values,
//! `frame-ancestors` keywords, `sandbox`, `report-to`, trusted types, `upgrade-insecure-requests`)
//! plus header safety: a value may not contain `;` or `,` (which would start another directive or
//! policy) nor characters a header cannot carry. A bad policy stops start-up: serving without the
//! intended CSP would silently weaken every browser session.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use http::HeaderValue;
use serde::Deserialize;

/// The CSP used when no file is configured (the oCIS default).
pub const DEFAULT_CSP_YAML: &str = include_str!("csp.yaml");

/// Why the CSP could not be loaded. Never retryable: the file or the environment must change.
#[derive(Debug, thiserror::Error)]
pub enum CspError {
    #[error("cannot read CSP file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "CSP configuration {origin} is not of the form `directives: {{name: [values]}}`: {message}"
    )]
    Parse { origin: String, message: String },
    #[error("CSP directive {directive:?}: {message}")]
    Invalid { directive: String, message: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CspFile {
    directives: BTreeMap<String, Vec<String>>,
}

/// A validated Content-Security-Policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Csp {
    directives: BTreeMap<String, Vec<String>>,
    header: HeaderValue,
}

impl Csp {
    /// Loads the policy from `file`, or the embedded default when `None`, substituting variables
    /// through `env` (normally `|name| std::env::var(name).ok()`).
    pub fn load(
        file: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Csp, CspError> {
        match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| CspError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                Csp::from_yaml(&text, &path.display().to_string(), env)
            }
            None => Csp::from_yaml(DEFAULT_CSP_YAML, "(built-in default)", env),
        }
    }

    /// Parses and validates YAML text; `origin` names it in errors.
    pub fn from_yaml(
        text: &str,
        origin: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Csp, CspError> {
        let file: CspFile = serde_yaml_ng::from_str(text).map_err(|e| CspError::Parse {
            origin: origin.to_owned(),
            message: e.to_string(),
        })?;
        let mut directives = BTreeMap::new();
        for (name, values) in file.directives {
            let values: Vec<String> = values
                .iter()
                .map(|v| substitute_env(v, env).trim().to_owned())
                .filter(|v| !v.is_empty())
                .collect();
            validate_directive(&name, &values).map_err(|message| CspError::Invalid {
                directive: name.clone(),
                message,
            })?;
            directives.insert(name, values);
        }
        let rendered = render(&directives);
        let header = HeaderValue::from_str(&rendered).map_err(|e| CspError::Invalid {
            directive: String::new(),
            message: format!("not a valid header value: {e}"),
        })?;
        Ok(Csp { directives, header })
    }

    /// Directive name → values, after substitution.
    pub fn directives(&self) -> &BTreeMap<String, Vec<String>> {
        &self.directives
    }

    /// The `Content-Security-Policy` header value: directives in alphabetical order,
    /// `name v1 v2`, joined by `; `.
    pub fn header_value(&self) -> &str {
        // Built from validated visible ASCII, so this cannot fail.
        self.header.to_str().unwrap_or_default()
    }

    pub(crate) fn http_header_value(&self) -> &HeaderValue {
        &self.header
    }
}

fn render(directives: &BTreeMap<String, Vec<String>>) -> String {
    let mut out = String::new();
    for (name, values) in directives {
        if !out.is_empty() {
            out.push_str("; ");
        }
        out.push_str(name);
        for v in values {
            out.push(' ');
            out.push_str(v);
        }
    }
    out
}

fn is_env_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ' ')
}

/// Replaces each `${NAME}` / `${NAME|default}` in `value`: the variable's value when set and
/// non-empty, else the default (else empty). Anything not of that shape is kept literally.
pub fn substitute_env(value: &str, env: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            return out;
        };
        let inner = &after[..end];
        let (name, default) = match inner.split_once('|') {
            Some((n, d)) => (n.trim(), d.trim()),
            None => (inner.trim(), ""),
        };
        if name.is_empty() || !name.chars().all(is_env_name_char) {
            out.push_str("${");
            rest = after;
            continue;
        }
        match env(name).filter(|v| !v.is_empty()) {
            Some(v) => out.push_str(&v),
            None => out.push_str(default),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

const SANDBOX_VALUES: &[&str] = &[
    "allow-downloads-without-user-activation",
    "allow-downloads",
    "allow-forms",
    "allow-modals",
    "allow-orientation-lock",
    "allow-pointer-lock",
    "allow-popups-to-escape-sandbox",
    "allow-popups",
    "allow-presentation",
    "allow-same-origin",
    "allow-scripts",
    "allow-storage-access-by-user-activation",
    "allow-top-navigation-by-user-activation",
    "allow-top-navigation-to-custom-protocols",
    "allow-top-navigation",
];

fn validate_directive(name: &str, values: &[String]) -> Result<(), String> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err("directive names consist of letters, digits and '-'".into());
    }
    for v in values {
        if let Some(bad) = v
            .chars()
            .find(|&c| c == ';' || c == ',' || !(c == ' ' || c.is_ascii_graphic()))
        {
            return Err(format!(
                "value {v:?} contains the forbidden character {bad:?}"
            ));
        }
    }
    let is_quoted = |v: &str| v.len() >= 2 && v.starts_with('\'') && v.ends_with('\'');
    match name {
        "sandbox" => match values {
            [] => Ok(()),
            [v] if SANDBOX_VALUES.contains(&v.as_str()) => Ok(()),
            [v] => Err(format!("{v:?} is not a sandbox keyword")),
            _ => Err("takes at most one value".into()),
        },
        "frame-ancestors" => {
            if values.is_empty() {
                return Err("needs at least one value".into());
            }
            match values
                .iter()
                .find(|v| is_quoted(v) && *v != "'self'" && *v != "'none'")
            {
                Some(v) => Err(format!(
                    "{v} is not allowed; the only keywords are 'self' and 'none'"
                )),
                None => Ok(()),
            }
        }
        "report-to" => match values {
            [_] => Ok(()),
            _ => Err("takes exactly one value".into()),
        },
        "require-trusted-types-for" => match values {
            [v] if v == "'script'" => Ok(()),
            _ => Err("the only value is 'script'".into()),
        },
        "trusted-types" => {
            for v in values {
                let ok = match v.as_str() {
                    "'none'" => values.len() == 1,
                    "'allow-duplicates'" | "*" => true,
                    policy => policy
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-#=_/@.%".contains(&b)),
                };
                if !ok {
                    return Err(format!("{v:?} is not allowed ('none' must stand alone)"));
                }
            }
            Ok(())
        }
        "upgrade-insecure-requests" => {
            if values.is_empty() {
                Ok(())
            } else {
                Err("takes no values".into())
            }
        }
        _ => {
            if values.is_empty() {
                Err("needs at least one value".into())
            } else {
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn default_policy_renders_the_ocis_header() {
        let csp = Csp::load(None, &no_env).unwrap();
        assert_eq!(
            csp.header_value(),
            "child-src 'self'; connect-src 'self' blob: https://raw.githubusercontent.com/owncloud/awesome-ocis/; \
             default-src 'none'; font-src 'self'; frame-ancestors 'self'; \
             frame-src 'self' blob: https://embed.diagrams.net/; \
             img-src 'self' data: blob: https://raw.githubusercontent.com/owncloud/awesome-ocis/; \
             manifest-src 'self'; media-src 'self'; object-src 'self' blob:; \
             script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'"
        );
        assert_eq!(
            csp.http_header_value().to_str().unwrap(),
            csp.header_value()
        );
    }

    const COLLABORA_YAML: &str = "
directives:
  frame-src:
    - '''self'''
    - 'https://embed.diagrams.net/'
    - 'https://${ONLYOFFICE_DOMAIN|onlyoffice.owncloud.test}/'
    - 'https://${COLLABORA_DOMAIN|collabora.owncloud.test}/'
";

    #[test]
    fn env_substitution_with_defaults() {
        // TestLoadCSPConfig
        let csp = Csp::from_yaml(COLLABORA_YAML, "test", &no_env).unwrap();
        assert_eq!(
            csp.directives()["frame-src"],
            [
                "'self'",
                "https://embed.diagrams.net/",
                "https://onlyoffice.owncloud.test/",
                "https://collabora.owncloud.test/"
            ]
        );
        let env =
            |name: &str| (name == "COLLABORA_DOMAIN").then(|| "office.example.com".to_owned());
        let csp = Csp::from_yaml(COLLABORA_YAML, "test", &env).unwrap();
        assert_eq!(
            csp.directives()["frame-src"][3],
            "https://office.example.com/"
        );
        assert_eq!(
            csp.directives()["frame-src"][2],
            "https://onlyoffice.owncloud.test/"
        );
    }

    #[test]
    fn substitution_edge_cases() {
        let env = |name: &str| match name {
            "SET" => Some("v".to_owned()),
            "EMPTY" => Some(String::new()),
            _ => None,
        };
        assert_eq!(substitute_env("a${SET}b", &env), "avb");
        assert_eq!(substitute_env("${SET|d}", &env), "v");
        assert_eq!(substitute_env("${EMPTY|d}", &env), "d");
        assert_eq!(substitute_env("${UNSET}", &env), "");
        assert_eq!(substitute_env("${ UNSET | d }", &env), "d");
        assert_eq!(substitute_env("${SET}${SET}", &env), "vv");
        assert_eq!(substitute_env("${unterminated", &env), "${unterminated");
        assert_eq!(substitute_env("${bad/name}x", &env), "${bad/name}x");
        assert_eq!(substitute_env("$SET {SET}", &env), "$SET {SET}");
    }

    #[test]
    fn values_that_substitute_to_nothing_are_dropped() {
        let yaml =
            "directives:\n  connect-src: [\"'self'\", '${ISSUER}']\n  img-src: ['${ISSUER}']";
        let err = Csp::from_yaml(yaml, "t", &no_env).unwrap_err();
        assert!(
            matches!(&err, CspError::Invalid { directive, .. } if directive == "img-src"),
            "{err}"
        );
        let yaml = "directives:\n  connect-src: [\"'self'\", '${ISSUER}']";
        let csp = Csp::from_yaml(yaml, "t", &no_env).unwrap();
        assert_eq!(csp.header_value(), "connect-src 'self'");
    }

    #[test]
    fn frame_ancestors_keywords_are_checked() {
        let yaml = "directives:\n  frame-ancestors: [\"'unsafe-inline'\"]";
        let err = Csp::from_yaml(yaml, "t", &no_env).unwrap_err();
        assert!(
            matches!(&err, CspError::Invalid { directive, .. } if directive == "frame-ancestors"),
            "{err}"
        );
        assert!(err.to_string().contains("frame-ancestors"), "{err}");
        for ok in ["'self'", "'none'", "https://portal.example.com"] {
            let yaml = format!("directives:\n  frame-ancestors: [\"{ok}\"]");
            Csp::from_yaml(&yaml, "t", &no_env).unwrap();
        }
    }

    #[test]
    fn other_builder_rules() {
        let invalid = |yaml: &str| Csp::from_yaml(yaml, "t", &no_env).is_err();
        assert!(invalid(
            "directives:\n  sandbox: [allow-forms, allow-scripts]"
        ));
        assert!(invalid("directives:\n  sandbox: [allow-everything]"));
        assert!(!invalid("directives:\n  sandbox: []"));
        assert!(!invalid("directives:\n  sandbox: [allow-forms]"));
        assert!(invalid("directives:\n  upgrade-insecure-requests: [x]"));
        assert!(!invalid("directives:\n  upgrade-insecure-requests: []"));
        assert!(invalid("directives:\n  report-to: [a, b]"));
        assert!(invalid(
            "directives:\n  require-trusted-types-for: [\"'x'\"]"
        ));
        assert!(invalid("directives:\n  trusted-types: [\"'none'\", a]"));
        assert!(!invalid(
            "directives:\n  trusted-types: [a, \"'allow-duplicates'\"]"
        ));
        assert!(invalid("directives:\n  script-src: []"));
        assert!(invalid(
            "directives:\n  script-src: [\"'self'; img-src *\"]"
        ));
        assert!(invalid("directives:\n  script-src: [\"a,b\"]"));
        assert!(invalid("directives:\n  script-src: [\"a\\nb\"]"));
        assert!(invalid("directives:\n  'bad name': [x]"));
        let csp = Csp::from_yaml(
            "directives:\n  upgrade-insecure-requests: []\n  a-src: [x]",
            "t",
            &no_env,
        )
        .unwrap();
        assert_eq!(csp.header_value(), "a-src x; upgrade-insecure-requests");
    }

    #[test]
    fn bad_shapes_and_files_are_errors() {
        for yaml in [
            "",
            "directives: [a]",
            "directives:\n  a: b",
            "other: {}",
            "directives:\n  a: [{x: 1}]",
        ] {
            assert!(
                matches!(
                    Csp::from_yaml(yaml, "t", &no_env),
                    Err(CspError::Parse { .. })
                ),
                "{yaml:?}"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.yaml");
        let err = Csp::load(Some(&missing), &no_env).unwrap_err();
        assert!(matches!(err, CspError::Read { .. }));
        assert!(err.to_string().contains("missing.yaml"));

        let file = dir.path().join("csp.yaml");
        std::fs::write(&file, COLLABORA_YAML).unwrap();
        let csp = Csp::load(Some(&file), &no_env).unwrap();
        assert_eq!(
            csp.header_value(),
            "frame-src 'self' https://embed.diagrams.net/ https://onlyoffice.owncloud.test/ https://collabora.owncloud.test/"
        );
    }
}
