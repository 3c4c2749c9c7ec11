//! `cargo afl fuzz -i corpus/compression_txt -o out/compression_txt target/release/compression_txt`
fn main() {
    afl::fuzz!(|data: &[u8]| {
        cairn::fuzzing::compression_txt(data);
    });
}
