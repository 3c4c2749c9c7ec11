//! `cargo afl fuzz -i corpus/http1_chunked -o out/http1_chunked target/release/http1_chunked`
fn main() {
    afl::fuzz!(|data: &[u8]| {
        cairn::fuzzing::http1_chunked(data);
    });
}
