//! Unit tests of the configuration parser and its checks.

use super::*;

#[test]
fn embedded_default_parses() {
    let c = Config::default();
    assert_eq!(c.listen, default_listen());
    assert_eq!(c.instances, default_instances());
    assert_eq!(c.storage, StorageConfig::default());
    assert_eq!(c.execution, ExecutionConfig::default());
    assert_eq!(c.sandbox, SandboxConfig::default());
    assert_eq!(c.asset, AssetConfig::default());
    assert_eq!(c.limits, LimitsConfig::default());
    assert_eq!(c.metrics, MetricsConfig::default());
    assert!(c.auth.tokens.is_empty() && c.tls.is_none());
    assert!(c.data_dir.is_none());
}

#[test]
fn empty_document_gives_defaults() {
    assert_eq!(Config::from_toml("").unwrap(), Config::default());
}

#[test]
fn unknown_keys_are_named() {
    let err = Config::from_toml("lisen = \"127.0.0.1:1\"").unwrap_err();
    assert!(err.to_string().contains("lisen"), "{err}");
    let err = Config::from_toml("[storage]\nfsynk = true").unwrap_err();
    assert!(err.to_string().contains("fsynk"), "{err}");
}

#[test]
fn human_sizes() {
    let c = Config::from_toml("[storage]\nmax_batch_total_size = \"8MiB\"").unwrap();
    assert_eq!(c.storage.max_batch_total_size, ByteSize::mib(8));
}

#[test]
fn bad_instances_rejected() {
    assert!(Config::from_toml("instances = []").is_err());
    assert!(Config::from_toml("[[instances]]\nname = \"a\"\n[[instances]]\nname = \"a\"").is_err());
    assert!(Config::from_toml("[[instances]]\nname = \"x/blobs\"").is_err());
    let c = Config::from_toml("[[instances]]\nname = \"a\"\nallow_ac_updates = false").unwrap();
    assert!(!c.instance("a").unwrap().allow_ac_updates);
    assert!(c.instance("").is_none());
}

/// The commented `[storage.remote]` block of the embedded file, uncommented: every key it
/// documents parses, with the documented defaults.
#[test]
fn documented_remote_section_parses() {
    let start = DEFAULT_TOML.find("# [storage.remote]").unwrap();
    let end = start + DEFAULT_TOML[start..].find("\n\n").unwrap();
    let section: String = DEFAULT_TOML[start..end]
        .lines()
        .filter_map(|l| l.strip_prefix("# "))
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    let c = Config::from_toml(&section).unwrap_or_else(|e| panic!("{e}\n{section}"));
    let remote = c.storage.remote.unwrap();
    assert_eq!(remote.bucket, "rexd");
    let defaults = RemoteConfig::default();
    assert_eq!(remote.write_policy, defaults.write_policy);
    assert_eq!(remote.max_concurrency, defaults.max_concurrency);
    assert_eq!(
        remote.existence_cache_entries,
        defaults.existence_cache_entries
    );
    assert_eq!(remote.max_write_back_queue, defaults.max_write_back_queue);
    assert_eq!(remote.request_timeout_secs, defaults.request_timeout_secs);
    assert_eq!(remote.max_age_days, defaults.max_age_days);

    let with_underscore = format!("{section}[[instances]]\nname = \"_\"\n");
    let err = Config::from_toml(&with_underscore).unwrap_err();
    assert!(err.to_string().contains("\"_\""), "{err}");
    let err = Config::from_toml("[storage.remote]\nsecret_access_key = \"x\"").unwrap_err();
    assert!(err.to_string().contains("secret_access_key"), "{err}");
}
