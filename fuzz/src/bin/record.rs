//! `cargo afl fuzz -i corpus/record -o out/record target/release/record`
fn main() {
    afl::fuzz!(|data: &[u8]| {
        cairn::fuzzing::record(data);
    });
}
