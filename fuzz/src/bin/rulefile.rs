//! `cargo afl fuzz -i corpus/rulefile -o out/rulefile target/release/rulefile`
fn main() {
    afl::fuzz!(|data: &[u8]| {
        cairn::fuzzing::rulefile(data);
    });
}
