//! Cache keys: which earlier result a task call may reuse.

use super::FlowRun;
use crate::model::{ComponentDigest, EffectivePolicy, FlowRunId};
use sha2::{Digest, Sha256};

/// The cache key of a call, or `None` when the task is not cached.
pub(super) fn cache_key(
    policy: &EffectivePolicy,
    digest: &ComponentDigest,
    name: &str,
    input: &str,
) -> Option<String> {
    use crate::model::CacheKeyPolicy;
    policy.cache_ttl?;
    let canonical = serde_json::from_str::<serde_json::Value>(input)
        .ok()?
        .to_string();
    let mut hasher = Sha256::new();
    match policy.cache_key {
        CacheKeyPolicy::None => return None,
        CacheKeyPolicy::InputAndCode => hasher.update(digest.as_str()),
        CacheKeyPolicy::Input => {}
    }
    hasher.update([0]);
    hasher.update(name);
    hasher.update([0]);
    hasher.update(canonical);
    Some(hex::encode(hasher.finalize()))
}

/// What a call's cache key may be made of (`CacheKeyPart`).
pub(super) struct CacheScope<'a> {
    task: &'a str,
    input: &'a str,
    params: &'a str,
    run: FlowRunId,
    digest: &'a ComponentDigest,
}

impl FlowRun {
    pub(super) fn cache_scope<'a>(&'a self, task: &'a str, input: &'a str) -> CacheScope<'a> {
        CacheScope {
            task,
            input,
            params: &self.params,
            run: self.id,
            digest: &self.component.digest,
        }
    }
}

/// The cache key made of the parts a policy lists, or `None` when the task
/// is not cached (or its input or params are not JSON). Each part is
/// tagged in the hash, so a key from the input alone never equals one from
/// the params alone.
pub(super) fn cache_key_of_parts(
    policy: &EffectivePolicy,
    parts: &[crate::model::CacheKeyPart],
    scope: &CacheScope<'_>,
) -> Option<String> {
    use crate::model::CacheKeyPart;
    policy.cache_ttl?;
    let canonical = |text: &str| {
        serde_json::from_str::<serde_json::Value>(text)
            .ok()
            .map(|v| v.to_string())
    };
    let mut hasher = Sha256::new();
    hasher.update(b"parts\0");
    hasher.update(scope.task);
    for part in parts {
        let (tag, value): (&[u8], String) = match part {
            CacheKeyPart::Input => (b"input", canonical(scope.input)?),
            CacheKeyPart::Params => (b"params", canonical(scope.params)?),
            CacheKeyPart::RunId => (b"run-id", scope.run.to_string()),
            CacheKeyPart::Code => (b"code", scope.digest.as_str().to_string()),
        };
        hasher.update([0]);
        hasher.update(tag);
        hasher.update([0]);
        hasher.update(value.len().to_le_bytes());
        hasher.update(value);
    }
    Some(hex::encode(hasher.finalize()))
}

/// What replay compares a call's input by (sha256 of the text the flow passed, hex).
pub(super) fn input_sha256(input: &str) -> String {
    hex::encode(Sha256::digest(input))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Policy, PolicyDefaults};
    use std::time::Duration;

    #[test]
    fn cache_keys_of_parts_take_exactly_what_they_name() {
        use crate::model::CacheKeyPart::{self, *};
        let defaults = PolicyDefaults::unbounded(1, 1, None);
        let forever = Policy {
            cache_ttl_ms: Some(crate::model::CACHE_FOREVER_MS),
            ..Policy::default()
        };
        let policy = EffectivePolicy::resolve(&forever, &defaults);
        assert_eq!(policy.cache_ttl, Some(Duration::MAX));
        let (a, b) = (
            ComponentDigest::from_sha256([1; 32]),
            ComponentDigest::from_sha256([2; 32]),
        );
        let (r1, r2) = (FlowRunId::new(), FlowRunId::new());
        let key = |parts: &[CacheKeyPart], input, params, run, digest| {
            let scope = CacheScope {
                task: "t",
                input,
                params,
                run,
                digest,
            };
            cache_key_of_parts(&policy, parts, &scope).unwrap()
        };
        // The input alone: params, run and code do not count, whitespace neither.
        assert_eq!(
            key(&[Input], r#"{"x": 1}"#, "{}", r1, &a),
            key(&[Input], r#"{"x":1}"#, r#"{"p":2}"#, r2, &b)
        );
        assert_ne!(
            key(&[Input, Params], "1", r#"{"p":1}"#, r1, &a),
            key(&[Input, Params], "1", r#"{"p":2}"#, r1, &a)
        );
        assert_eq!(
            key(&[RunId], "1", "{}", r1, &a),
            key(&[RunId], "2", "{}", r1, &a)
        );
        assert_ne!(
            key(&[RunId], "1", "{}", r1, &a),
            key(&[RunId], "1", "{}", r2, &a)
        );
        assert_ne!(
            key(&[Input, Code], "1", "{}", r1, &a),
            key(&[Input, Code], "1", "{}", r1, &b)
        );
        // Each part is tagged: input 1 with params 2 is not params 1 with input 2.
        assert_ne!(
            key(&[Input], "1", "2", r1, &a),
            key(&[Params], "2", "1", r1, &a)
        );
        let uncached = EffectivePolicy::resolve(&Policy::default(), &defaults);
        let scope = CacheScope {
            task: "t",
            input: "1",
            params: "{}",
            run: r1,
            digest: &a,
        };
        assert_eq!(cache_key_of_parts(&uncached, &[Input], &scope), None);
    }

    #[test]
    fn cache_key_depends_on_policy_code_and_canonical_input() {
        let defaults = PolicyDefaults::unbounded(1, 1, None);
        let mut policy = Policy {
            cache_ttl_ms: Some(1000),
            ..Policy::default()
        };
        let a = ComponentDigest::from_sha256([1; 32]);
        let b = ComponentDigest::from_sha256([2; 32]);
        let p = EffectivePolicy::resolve(&policy, &defaults);
        let k1 = cache_key(&p, &a, "t", r#"{"x": 1}"#).unwrap();
        assert_eq!(
            Some(k1.clone()),
            cache_key(&p, &a, "t", r#"{"x":1}"#),
            "whitespace does not matter"
        );
        assert_ne!(
            Some(k1.clone()),
            cache_key(&p, &b, "t", r#"{"x":1}"#),
            "code matters by default"
        );
        policy.cache_key = Some(crate::model::CacheKeyPolicy::Input);
        let p = EffectivePolicy::resolve(&policy, &defaults);
        assert_eq!(cache_key(&p, &a, "t", "1"), cache_key(&p, &b, "t", "1"));
        policy.cache_ttl_ms = None;
        assert_eq!(
            cache_key(&EffectivePolicy::resolve(&policy, &defaults), &a, "t", "1"),
            None
        );
    }
}
