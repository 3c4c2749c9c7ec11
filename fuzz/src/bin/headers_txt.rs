//! `cargo afl fuzz -i corpus/headers_txt -o out/headers_txt target/release/headers_txt`
fn main() {
    afl::fuzz!(|data: &[u8]| {
        cairn::fuzzing::headers_txt(data);
    });
}
