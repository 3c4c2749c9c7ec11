//! `cargo afl fuzz -i corpus/ttl_txt -o out/ttl_txt target/release/ttl_txt`
fn main() {
    afl::fuzz!(|data: &[u8]| {
        cairn::fuzzing::ttl_txt(data);
    });
}
