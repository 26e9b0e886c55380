//! Showing the effective configuration (`gatehouse config dump`, the debug server's `/config`)
//! without leaking secrets into terminals, logs or metrics scrapes.

use super::schema::Config;

/// What a non-empty secret is replaced with.
pub const MASK: &str = "***";

fn mask(secret: &mut String) {
    if !secret.is_empty() {
        *secret = MASK.to_owned();
    }
}

/// Replaces the `user:password@` part of a URL, if any.
fn mask_userinfo(url: &mut String) {
    let Some(scheme_end) = url.find("://") else {
        return;
    };
    let authority_start = scheme_end + 3;
    let authority_end = url[authority_start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| authority_start + i);
    if let Some(at) = url[authority_start..authority_end].rfind('@') {
        url.replace_range(authority_start..authority_start + at, MASK);
    }
}

impl Config {
    /// A copy with every secret replaced by `***` (empty secrets stay empty, so a dump still
    /// shows whether one is set): every setting of the secrets list (tokens, keys, NATS
    /// passwords, tokens and NKey seeds), the values of the trace exporter's headers, and
    /// credentials embedded in service and collector URLs.
    pub fn masked(&self) -> Config {
        let mut c = self.clone();
        for (_, secret) in super::secrets::secrets_mut(&mut c) {
            mask(secret);
        }
        for urls in c.services.values_mut() {
            urls.iter_mut().for_each(mask_userinfo);
        }
        c.tracing.headers.values_mut().for_each(mask);
        mask_userinfo(&mut c.tracing.endpoint);
        mask_userinfo(&mut c.tracing.collector);
        c
    }

    /// A copy whose `policies` is the route table in force: the default `ocis` policy with the
    /// `additional_policies` merged in when no `policies` are configured (spec §1.1). It routes
    /// exactly as `self` does, and shows an operator what is routed where.
    pub fn with_effective_policies(&self) -> Config {
        let mut c = self.clone();
        c.policies = crate::routing::effective_policies(&self.policies, &self.additional_policies);
        c.additional_policies.clear();
        c
    }

    /// The configuration as `proxy.yaml` text; it loads back to the same configuration.
    /// Call [`Config::masked`] first when the output leaves the process.
    pub fn to_yaml(&self) -> String {
        serde_yaml_ng::to_string(self)
            .unwrap_or_else(|e| format!("# the configuration could not be serialized: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_in_urls_is_masked() {
        let mut u = "http://user:pw@host:1/p@x".to_owned();
        mask_userinfo(&mut u);
        assert_eq!(u, "http://***@host:1/p@x");
        let mut u = "http://host/p@x".to_owned();
        mask_userinfo(&mut u);
        assert_eq!(u, "http://host/p@x");
    }
}
