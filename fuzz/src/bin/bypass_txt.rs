//! `cargo afl fuzz -i corpus/bypass_txt -o out/bypass_txt target/release/bypass_txt`
fn main() {
    afl::fuzz!(|data: &[u8]| {
        cairn::fuzzing::bypass_txt(data);
    });
}
