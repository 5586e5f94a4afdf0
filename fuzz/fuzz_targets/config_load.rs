//! The configuration loader on arbitrary bytes: the input is split at the first NUL into
//! the main file (`leadsync.toml`) and one target file (`targets/t.toml`), written to a
//! temporary folder and loaded as `leadsync check` does. It must return settings or
//! configuration errors, never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (main, target) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b""[..]),
    };
    let Ok(dir) = tempfile::tempdir() else { return };
    let targets = dir.path().join("targets");
    if std::fs::create_dir(&targets).is_err() {
        return;
    }
    let config = dir.path().join("leadsync.toml");
    if std::fs::write(&config, main).is_err()
        || std::fs::write(targets.join("t.toml"), target).is_err()
    {
        return;
    }
    let _ = leadsync::wiring::load(&config);
});
