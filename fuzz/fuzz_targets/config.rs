//! See `vmbw::fuzzing::config`: no text may panic the loader (bytes that are
//! not UTF-8 never reach it: the agent reads files as strings).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        vmbw::fuzzing::config(text);
    }
});
