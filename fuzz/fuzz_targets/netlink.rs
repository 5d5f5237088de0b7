//! See `vmbw::fuzzing::netlink_datagram`: no input may panic the decoder.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vmbw::fuzzing::netlink_datagram(data));
