//! Any byte string: the GGUF parser returns Ok or Err, never panics, and an Ok
//! header only describes data inside the buffer.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = dynapress_gguf::parse_header(data) {
        assert!(h.data_offset % u64::from(h.alignment) == 0);
        for t in &h.tensors {
            let end = h.data_offset + t.offset + t.n_bytes;
            assert!(end <= data.len() as u64, "{} ends at {end}", t.name);
        }
    }
});
