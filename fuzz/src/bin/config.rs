//! `cargo afl fuzz -i corpus/config -o out/config target/release/config`
fn main() {
    afl::fuzz!(|data: &[u8]| {
        cairn::fuzzing::config(data);
    });
}
