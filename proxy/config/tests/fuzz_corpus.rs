//! The config fuzzer's corpus (`fuzz/corpus/config_toml`) replayed on stable: parsing and
//! validation never panic, and a configuration that validates survives a TOML round trip.

use loka_config::Config;
use std::path::PathBuf;

#[test]
fn config_toml_corpus() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/config_toml");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let data = std::fs::read(entry.unwrap().path()).unwrap();
        n += 1;
        let Ok(text) = std::str::from_utf8(&data) else {
            continue;
        };
        let Ok(cfg) = Config::from_toml(text) else {
            continue;
        };
        match cfg.validate() {
            Err(e) => assert!(!e.0.is_empty()),
            Ok(()) => {
                let again = Config::from_toml(&cfg.to_toml()).unwrap();
                assert_eq!(again, cfg);
            }
        }
    }
    assert!(n > 0, "{} is empty", dir.display());
}
