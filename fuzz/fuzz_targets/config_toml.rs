//! Configuration text: parsing and validation never panic; a configuration that validates
//! survives a TOML round trip unchanged and still validates.
#![no_main]

use libfuzzer_sys::fuzz_target;
use loka_config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(cfg) = Config::from_toml(text) else {
        return;
    };
    if let Err(e) = cfg.validate() {
        assert!(
            !e.0.is_empty(),
            "an invalid configuration names at least one problem"
        );
        return;
    }
    let _ = cfg.version_rolling_mask();
    let again = Config::from_toml(&cfg.to_toml()).expect("a valid configuration round-trips");
    assert_eq!(again, cfg);
    assert!(again.validate().is_ok());
});
