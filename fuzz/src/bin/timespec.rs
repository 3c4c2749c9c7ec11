//! `cargo afl fuzz -i corpus/timespec -o out/timespec target/release/timespec`
fn main() {
    afl::fuzz!(|data: &[u8]| {
        cairn::fuzzing::timespec(data);
    });
}
