//! What a bot sends, from arbitrary bytes: an UpdateBotSessionRequest. Decoding it, and then
//! each lease's payload, result and output paths the way the server and the worker read
//! them, must never panic; a result whose paths pass the check (from the exec root) has no
//! absolute path and none that climbs out.

#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use rexd::execution::bots::lease;
use rexd::proto::remoteworkers::UpdateBotSessionRequest;

fuzz_target!(|data: &[u8]| {
    let Ok(request) = UpdateBotSessionRequest::decode(data) else {
        return;
    };
    for l in request.bot_session.iter().flat_map(|s| &s.leases) {
        let _ = lease::decode_payload(l);
        let (result, _) = lease::decode_result(l, "fuzz");
        if lease::check_paths(&result, "", "fuzz").is_ok() {
            for file in &result.output_files {
                assert!(!file.path.starts_with('/'), "{:?}", file.path);
                let mut depth = 0i64;
                for part in file.path.split('/') {
                    match part {
                        "" | "." => {}
                        ".." => depth -= 1,
                        _ => depth += 1,
                    }
                    assert!(depth >= 0, "{:?} climbs out", file.path);
                }
            }
        }
    }
});
