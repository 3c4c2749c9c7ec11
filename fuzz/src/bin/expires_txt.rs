//! `cargo afl fuzz -i corpus/expires_txt -o out/expires_txt target/release/expires_txt`
fn main() {
    afl::fuzz!(|data: &[u8]| {
        cairn::fuzzing::expires_txt(data);
    });
}
