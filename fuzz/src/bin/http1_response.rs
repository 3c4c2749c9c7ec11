//! `cargo afl fuzz -i corpus/http1_response -o out/http1_response target/release/http1_response`
fn main() {
    afl::fuzz!(|data: &[u8]| {
        cairn::fuzzing::http1_response(data);
    });
}
