//! `Config::from_toml` on arbitrary UTF-8 never panics, nor does `Settings::new`, which
//! derives the working values (and reads any token files) from a configuration it accepted.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let Ok(config) = rexd::Config::from_toml(text) else {
        return;
    };
    assert!(!config.instances.is_empty());
    for instance in &config.instances {
        assert_eq!(config.instance(&instance.name), Some(instance));
    }
    if let Ok(settings) = rexd::config::Settings::new(config) {
        assert!(settings.execution.workers >= 1);
        assert!(settings.cas.low_water <= settings.cas.max_size);
    }
});
