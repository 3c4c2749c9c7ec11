//! `cargo afl fuzz -i corpus/condition -o out/condition target/release/condition`
fn main() {
    afl::fuzz!(|data: &[u8]| {
        cairn::fuzzing::condition(data);
    });
}
