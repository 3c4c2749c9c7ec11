//! `cargo afl fuzz -i corpus/cache_control -o out/cache_control target/release/cache_control`
fn main() {
    afl::fuzz!(|data: &[u8]| {
        cairn::fuzzing::cache_control(data);
    });
}
