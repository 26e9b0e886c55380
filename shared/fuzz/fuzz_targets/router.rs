//! Raw router input: `METHOD \n PATH \n QUERY \n COOKIE` (missing parts are absent), any bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(4, '\n');
    let method = parts.next().unwrap_or_default();
    let path = parts.next().unwrap_or_default();
    let query = parts.next();
    let cookie = parts.next();
    gatehouse_shared_fuzz::route_and_check(method, path, query, cookie);
});
