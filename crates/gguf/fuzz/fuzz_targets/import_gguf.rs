//! Any byte string the GGUF parser accepts: the Hugging Face import returns
//! Ok or an import error, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(f) = dynapress_gguf::GgufFile::from_bytes(data.to_vec(), "fuzz.gguf") {
        if let Err(e) = dynapress_gguf::import::import(&f) {
            assert!(e.import_error().is_some(), "{e}");
        }
    }
});
