//! `cargo afl fuzz -i corpus/origin_head -o out/origin_head target/release/origin_head`
fn main() {
    afl::fuzz!(|data: &[u8]| {
        cairn::fuzzing::origin_head(data);
    });
}
