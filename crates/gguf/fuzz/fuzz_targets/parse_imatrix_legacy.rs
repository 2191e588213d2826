//! Any byte string: the legacy imatrix parser returns Ok or Err, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(im) = dynapress_gguf::Imatrix::parse_legacy(data, std::path::Path::new("fuzz-input")) {
        for e in im.entries.values() {
            assert_eq!(e.counts.len(), 1);
            assert!(!e.sums.is_empty());
        }
    }
});
