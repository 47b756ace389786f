//! The fuzz targets' fixture, built once per process; what each target does
//! is in [`harness`] (shared with the regression test in `tests/it`).

pub mod harness;

use std::sync::OnceLock;

/// The fixture (keys and SQLite file in a temporary folder of this process).
pub fn fixture() -> &'static harness::Fixture {
    static FIXTURE: OnceLock<harness::Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("relais-fuzz-{}", std::process::id()));
        let built = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
            .and_then(|rt| rt.block_on(harness::fixture(&dir)));
        match built {
            Ok(f) => f,
            // The fuzzer cannot run without its fixture: stop loudly.
            Err(e) => panic!("fuzz fixture: {e}"),
        }
    })
}
