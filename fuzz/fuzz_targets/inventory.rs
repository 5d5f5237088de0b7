//! The planner's JSON inventory reader: no text may panic it, and an
//! inventory it accepts must be one the planners can run on.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(inv) = vmbw_plan::inventory::Inventory::from_json(text) {
        assert_eq!(inv.adjacency.len(), inv.vms.len());
    }
});
