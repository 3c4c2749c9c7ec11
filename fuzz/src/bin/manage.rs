//! `cargo afl fuzz -i corpus/manage -o out/manage target/release/manage`
fn main() {
    afl::fuzz!(|data: &[u8]| {
        cairn::fuzzing::manage(data);
    });
}
