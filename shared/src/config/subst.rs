//! `${VAR}` and `${VAR|default}` inside `proxy.yaml`, as newer oCIS expands them.
//!
//! References are expanded inside string values after the YAML is parsed, never in the text, so a
//! variable's value cannot change the file's structure (a value with a newline or `: ` stays one
//! string). A value that is exactly one reference takes the type of the setting's default when it
//! reads as one (`workers: ${WORKERS|2}` is a number), so numbers and booleans can come from the
//! environment too. `$${` writes a literal `${`.
//!
//! Unlike oCIS, which substitutes an empty string, a reference to an undefined variable without a
//! default stops start-up naming the key and the variable: an empty secret or address is the kind
//! of silent mistake the configuration checks exist to prevent. A variable set to the empty string
//! is defined; it takes the default when there is one (the rule of the CSP file's references).

use std::collections::BTreeMap;

use serde_yaml_ng::Value;

use super::error::ConfigProblem;

/// Expands every reference in the string values of `value`; `defaults` is the same path in the
/// built-in defaults, for the types of whole-value references.
pub(crate) fn expand_tree(
    value: &mut Value,
    defaults: Option<&Value>,
    path: &str,
    env: &BTreeMap<String, String>,
    problems: &mut Vec<ConfigProblem>,
) {
    match value {
        Value::String(s) if s.contains("${") => match expand(s, env) {
            Ok(expanded) => {
                let whole = is_one_reference(s);
                *value = typed(expanded, whole.then_some(defaults).flatten());
            }
            Err(message) => problems.push(ConfigProblem::new(display(path), message)),
        },
        Value::Mapping(map) => {
            for (k, v) in map.iter_mut() {
                let key = match k {
                    Value::String(k) => k.clone(),
                    other => serde_yaml_ng::to_string(other)
                        .map(|s| s.trim().to_owned())
                        .unwrap_or_default(),
                };
                let child = defaults.and_then(|d| d.get(&key));
                let child_path = if path.is_empty() {
                    key
                } else {
                    format!("{path}.{key}")
                };
                expand_tree(v, child, &child_path, env, problems);
            }
        }
        Value::Sequence(items) => {
            for (i, v) in items.iter_mut().enumerate() {
                let child = defaults
                    .and_then(|d| d.get(i))
                    .or_else(|| defaults.and_then(|d| d.get(0)));
                expand_tree(v, child, &format!("{path}[{i}]"), env, problems);
            }
        }
        Value::Tagged(t) => expand_tree(&mut t.value, defaults, path, env, problems),
        _ => {}
    }
}

fn display(path: &str) -> String {
    if path.is_empty() {
        "(root)".to_owned()
    } else {
        path.to_owned()
    }
}

/// The expanded text, or a message naming every undefined variable without a default.
pub(crate) fn expand(text: &str, env: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut undefined = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find('$') {
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
            continue;
        }
        let Some(body) = after.strip_prefix("${") else {
            out.push('$');
            rest = &after[1..];
            continue;
        };
        let Some(end) = body.find('}') else {
            return Err(format!("unterminated ${{…}} in {text:?}"));
        };
        let inner = &body[..end];
        let (name, default) = match inner.split_once('|') {
            Some((n, d)) => (n.trim(), Some(d.trim())),
            None => (inner.trim(), None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!(
                "${{{inner}}} is not a variable reference (a name of letters, digits and _, \
                 optionally |default)"
            ));
        }
        match (env.get(name), default) {
            (Some(v), Some(d)) if v.is_empty() => out.push_str(d),
            (Some(v), _) => out.push_str(v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => undefined.push(name.to_owned()),
        }
        rest = &body[end + 1..];
    }
    out.push_str(rest);
    if undefined.is_empty() {
        Ok(out)
    } else {
        Err(format!(
            "undefined environment variable{} {} (set it, or give a default: ${{{}|value}})",
            if undefined.len() > 1 { "s" } else { "" },
            undefined.join(", "),
            undefined[0]
        ))
    }
}

fn is_one_reference(text: &str) -> bool {
    let t = text.trim();
    t.starts_with("${") && t.ends_with('}') && t[2..t.len() - 1].find(['{', '}', '$']).is_none()
}

/// `expanded` as the type of `default` when it reads as one; a string otherwise.
fn typed(expanded: String, default: Option<&Value>) -> Value {
    match default {
        Some(Value::Number(_)) => match serde_yaml_ng::from_str::<Value>(&expanded) {
            Ok(n @ Value::Number(_)) => n,
            _ => Value::String(expanded),
        },
        Some(Value::Bool(_)) => match serde_yaml_ng::from_str::<Value>(&expanded) {
            Ok(b @ Value::Bool(_)) => b,
            _ => Value::String(expanded),
        },
        _ => Value::String(expanded),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> BTreeMap<String, String> {
        [("HOST", "nats.example"), ("EMPTY", ""), ("N", "4")]
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn references_defaults_and_literals() {
        let e = env();
        assert_eq!(
            expand("nats://${HOST}:4222", &e).unwrap(),
            "nats://nats.example:4222"
        );
        assert_eq!(expand("${MISSING|fallback}", &e).unwrap(), "fallback");
        assert_eq!(expand("${ EMPTY | d }", &e).unwrap(), "d");
        assert_eq!(expand("a${EMPTY}b", &e).unwrap(), "ab");
        assert_eq!(expand("$${HOST} costs $5", &e).unwrap(), "${HOST} costs $5");
        assert_eq!(
            expand("${HOST}${HOST}", &e).unwrap(),
            "nats.examplenats.example"
        );
    }

    #[test]
    fn undefined_and_malformed_references_are_errors_naming_them() {
        let e = env();
        let err = expand("${A}-${B}", &e).unwrap_err();
        assert!(err.contains("A, B"), "{err}");
        assert!(
            expand("${unterminated", &e)
                .unwrap_err()
                .contains("unterminated")
        );
        assert!(
            expand("${a-b}", &e)
                .unwrap_err()
                .contains("not a variable reference")
        );
    }

    #[test]
    fn values_keep_their_structure_and_take_the_default_type() {
        let e: BTreeMap<String, String> = [("V", "x\ny: 1"), ("W", "3"), ("T", "true")]
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let mut value: Value = serde_yaml_ng::from_str(
            "a: ${V}\nworkers: ${W}\ntls: ${T}\nname: ${W}\nlist: [\"${W}\"]\n",
        )
        .unwrap();
        let defaults: Value = serde_yaml_ng::from_str("workers: 0\ntls: false\nname: n\n").unwrap();
        let mut problems = Vec::new();
        expand_tree(&mut value, Some(&defaults), "", &e, &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(value["a"], Value::String("x\ny: 1".into()));
        assert_eq!(
            value["workers"],
            serde_yaml_ng::from_str::<Value>("3").unwrap()
        );
        assert_eq!(value["tls"], Value::Bool(true));
        assert_eq!(value["name"], Value::String("3".into()));
        assert_eq!(value["list"][0], Value::String("3".into()));
        let mut bad: Value = serde_yaml_ng::from_str("http:\n  addr: ${NOPE}\n").unwrap();
        expand_tree(&mut bad, None, "", &e, &mut problems);
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].key, "http.addr");
        assert!(problems[0].message.contains("NOPE"), "{problems:?}");
    }
}
