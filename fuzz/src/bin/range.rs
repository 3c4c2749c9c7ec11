//! `cargo afl fuzz -i corpus/range -o out/range target/release/range`
fn main() {
    afl::fuzz!(|data: &[u8]| {
        cairn::fuzzing::range(data);
    });
}
