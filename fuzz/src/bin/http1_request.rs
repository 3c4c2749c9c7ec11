//! `cargo afl fuzz -i corpus/http1_request -o out/http1_request target/release/http1_request`
fn main() {
    afl::fuzz!(|data: &[u8]| {
        cairn::fuzzing::http1_request(data);
    });
}
