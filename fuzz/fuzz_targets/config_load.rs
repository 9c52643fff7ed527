//! `Config::from_toml` on arbitrary UTF-8 never panics, nor do the accessors that derive the
//! settings in force from a configuration it accepted.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let Ok(config) = rexd::Config::from_toml(text) else {
        return;
    };
    let _ = config.storage.cas_options();
    let _ = config.execution.worker_count();
    let _ = config.execution.platform_properties();
    let _ = config.data_dir();
    assert!(!config.instances.is_empty());
    for instance in &config.instances {
        assert_eq!(config.instance(&instance.name), Some(instance));
    }
});
