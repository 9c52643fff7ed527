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
