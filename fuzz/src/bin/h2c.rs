//! `cargo afl fuzz -i corpus/h2c -o out/h2c target/release/h2c`
fn main() {
    afl::fuzz!(|data: &[u8]| {
        cairn::fuzzing::h2c(data);
    });
}
